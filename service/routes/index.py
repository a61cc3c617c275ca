"""The index as a resource: what it holds, adding and replacing images (with ids and metadata), removing them,
and their thumbnails. Every change is durable when it is answered (service.catalog)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

import numpy as np

from fastapi import APIRouter, Path, Query, Request, Response
from pydantic import TypeAdapter, ValidationError

from contract.bundle import describe
from service.catalog import Item, Record
from service.dependencies import TO_MODEL, Index, Ready
from service.problems import Problem, validated
from service.routes import NOT_FOUND, PROBLEMS, QueryFilter, describe_index, image_url, where_of
from service.schemas import (ImageId, IndexChange, IndexDeleteJSON, IndexedImage, IndexImagesJSON, IndexPage,
                             IndexSummary, IndexVectorsJSON, MetadataPatch,
                             Metadata)
from service.state import ServiceState
from service.uploads import base64_files, decode_for_index, read_multipart, request_kind

router = APIRouter(tags=["index"])
R = TypeVar("R")
IdPath = Annotated[str, Path(description="the image's id (slashes allowed)")]
ADD_BODY = {"requestBody": {"required": True, "content": {
    "multipart/form-data": {"schema": {"type": "object", "required": ["images"], "properties": {
        "images": {"type": "array", "minItems": 1, "items": {"type": "string", "format": "binary"}},
        "ids": {"type": "array", "items": {"type": "string"},
                "description": "one per image, in order (default: the files' names)"},
        "metadata": {"type": "array", "items": {"type": "string"},
                     "description": "a JSON object per image, in order, or one for all of them"}}}},
    "application/json": {"schema": IndexImagesJSON.model_json_schema()},
}}}
_ID, _METADATA = TypeAdapter(ImageId), TypeAdapter(Metadata)


@router.get("/index", response_model=IndexSummary)
async def index_summary(state: Ready, index: Index) -> IndexSummary:
    """What the index is and holds: its FAISS type, size, dimension, classes."""
    return await state.run_search(describe_index, index)


@router.post("/index/images", response_model=IndexChange, responses={**PROBLEMS, 409: PROBLEMS[422]},
             openapi_extra=ADD_BODY, dependencies=[TO_MODEL])
async def add_images(request: Request, state: Ready, index: Index) -> IndexChange:
    """Add images to the index with their ids and metadata, replacing those whose ids are indexed already.
    Durable when answered: a crash after the answer loses none of them."""
    if index.read_only:
        raise _read_only()
    with state.batcher.incoming():
        ids, files, metadata = await _read_additions(request, state.settings.max_images)
        images, thumbnails = await decode_for_index(files, state, index.info.thumbnail_size)
    vectors = (await state.batcher.submit(images)).unit.numpy()
    items = [Item(*fields) for fields in zip(ids, vectors, metadata, thumbnails)]
    (added, replaced), count = await _change(state, index, index.add, items)
    return IndexChange(added=added, replaced=replaced, ids=ids, count=count)


@router.post("/index/vectors", response_model=IndexChange, responses={409: PROBLEMS[422]})
async def add_vectors(body: IndexVectorsJSON, state: Ready, index: Index) -> IndexChange:
    """Add vectors embedded already (by this model: /embed's representations, or an export's) with their ids and
    metadata, replacing those whose ids are indexed already; no thumbnail. Durable when answered."""
    if index.read_only:
        raise _read_only()
    ids = [v.id for v in body.vectors]
    if len(set(ids)) != len(ids):
        raise Problem(422, "the same id is given twice in one request")
    wrong = next((n for n, v in enumerate(body.vectors) if len(v.vector) != index.dim), None)
    if wrong is not None:
        raise Problem(422, f"vectors[{wrong}] has {len(body.vectors[wrong].vector)} numbers: this index holds "
                      f"{index.dim}-d representations")
    vectors = np.array([v.vector for v in body.vectors], dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    if not np.all(np.isfinite(norms) & (norms > 0)):
        raise Problem(422, "a vector is zero or too large: it has no direction to search by")
    items = [Item(v.id, vector, v.metadata) for v, vector in zip(body.vectors, vectors / norms)]
    (added, replaced), count = await _change(state, index, index.add, items)
    return IndexChange(added=added, replaced=replaced, ids=ids, count=count)


@router.post("/index/delete", response_model=IndexChange, responses={409: PROBLEMS[422]})
async def delete_images(body: IndexDeleteJSON, state: Ready, index: Index) -> IndexChange:
    """Remove many images at once: by their ids, or every image whose metadata matches a filter (as search's).
    The answer's ids are those asked for, or those the filter matched; `removed` how many were indexed. Durable
    when answered."""
    if index.read_only:
        raise _read_only()

    def delete() -> tuple[list[str], int]:
        if body.ids is None:
            ids = index.remove_matching(where_of(filters=body.filter))
            return ids, len(ids)
        return body.ids, index.remove(body.ids)

    (ids, removed), count = await _change(state, index, delete)
    return IndexChange(added=0, replaced=0, removed=removed, ids=ids, count=count)


@router.get("/index/images", response_model=IndexPage)
async def list_images(request: Request, state: Ready, index: Index,
                      after: Annotated[str | None, Query(max_length=1024, description="a page's `next`")] = None,
                      limit: Annotated[int, Query(ge=1, le=1000)] = 100, filter: QueryFilter = None) -> IndexPage:
    """The indexed images, a page at a time (in the order they were added, on the local index; by id on Milvus);
    only those whose metadata matches filter (as search's)."""
    records, next = await state.run_search(index.page, after, limit, where_of(filters=filter))
    root_path = request.scope.get("root_path", "")
    return IndexPage(images=[_indexed(record, root_path) for record in records], next=next)


@router.get("/index/images/{id:path}", response_model=IndexedImage, responses=NOT_FOUND)
async def get_image(request: Request, id: IdPath, state: Ready, index: Index) -> IndexedImage:
    """An indexed image's metadata and where its thumbnail is."""
    record = await state.run_search(index.get, id)
    if record is None:
        raise Problem(404, f"no indexed image has id {id!r}")
    return _indexed(record, request.scope.get("root_path", ""))


def _indexed(record: Record, root_path: str) -> IndexedImage:
    return IndexedImage(id=record.id, metadata=record.metadata, added=record.added,
                        image_url=image_url(record.id, root_path))


@router.patch("/index/images/{id:path}", response_model=IndexedImage, responses={**NOT_FOUND, 409: PROBLEMS[422]})
async def update_metadata(request: Request, id: IdPath, body: MetadataPatch, state: Ready,
                          index: Index) -> IndexedImage:
    """Change an indexed image's metadata without sending the image again: each key given is set, or removed
    when null (a JSON merge patch); its vector, thumbnail, time added and place in the listing stay. Durable
    when answered."""
    if index.read_only:
        raise _read_only()

    def patch() -> Record | None:
        record = index.get(id)
        if record is None:
            return None
        merged = {k: v for k, v in {**record.metadata, **body.metadata}.items() if v is not None}
        try:
            merged = _METADATA.validate_python(merged)
        except ValidationError as e:
            raise Problem(422, f"the metadata after the patch: {describe(e)}") from None
        return index.update_metadata(id, merged)

    with state.metrics.index_changes.time():
        record = await state.run_search(patch)
    if record is None:
        raise Problem(404, f"no indexed image has id {id!r}")
    return _indexed(record, request.scope.get("root_path", ""))


@router.delete("/index/images/{id:path}", response_model=IndexChange, responses={**NOT_FOUND, 409: PROBLEMS[422]})
async def remove_image(id: IdPath, state: Ready, index: Index) -> IndexChange:
    """Remove an image from the index. Durable when answered."""
    if index.read_only:
        raise _read_only()
    removed, count = await _change(state, index, index.remove, [id])
    if not removed:
        raise Problem(404, f"no indexed image has id {id!r}")
    return IndexChange(added=0, replaced=0, removed=removed, ids=[id], count=count)


async def _change(state: ServiceState, index: Index, change: Callable[..., R], *args: Any) -> tuple[R, int]:
    """change(*args), timed, and then the index's size, both in the search thread: on Milvus the size is a call
    to the server, which must not hold up the event loop."""
    def counted() -> tuple[R, int]:
        with state.metrics.index_changes.time():
            done = change(*args)
        return done, index.count
    return await state.run_search(counted)


@router.get("/thumbnails/{id:path}", response_class=Response, responses={
    200: {"content": {"image/jpeg": {}}, "description": "the indexed image's thumbnail"}, **NOT_FOUND})
async def thumbnail(id: IdPath, state: Ready, index: Index) -> Response:
    """An indexed image's thumbnail (JPEG, its longest side at most the index's thumbnail size). Served from the
    catalog: no file path is ever built from a request."""
    jpeg = await state.run_search(index.thumbnail, id)
    if jpeg is None:
        raise Problem(404, f"no indexed image has id {id!r}, or it has no thumbnail")
    return Response(jpeg, media_type="image/jpeg", headers={"Cache-Control": "no-cache"})  # an id may be replaced


async def _read_additions(request: Request, limit: int) -> tuple[list[str], list[tuple[str, bytes]], list[dict]]:
    """(ids, (name, bytes) files, metadata) from a multipart or JSON body, checked."""
    if request_kind(request) == "json":
        body = validated(IndexImagesJSON, await request.body(),
                         '{"images": [{"id": ..., "image": base64, "metadata": {...}}]}')
        ids, metadata = [i.id for i in body.images], [i.metadata for i in body.images]
        files = base64_files([i.image for i in body.images], "images")
    else:
        files, filenames, fields = await read_multipart(request, limit, text_fields=("ids", "metadata"))
        ids = fields.get("ids") or filenames
        metadata = [_metadata(text, n) for n, text in enumerate(fields.get("metadata", []))] or [{}]
        if len(ids) != len(files):
            raise Problem(422, f"{len(ids)} ids for {len(files)} images: give one id per image, in order")
        if len(metadata) == 1:
            metadata = metadata * len(files)
        if len(metadata) != len(files):
            raise Problem(422, f"{len(metadata)} metadata fields for {len(files)} images: give one per image, in "
                          f"order, or one for all")
        for n, id in enumerate(ids):
            try:
                _ID.validate_python(id)  # a file name may be missing (None): then ids must be given
            except ValidationError as e:
                raise Problem(422, f"ids[{n}] {id!r}: {describe(e)}") from None
    if len(set(ids)) != len(ids):
        raise Problem(422, "the same id is given twice in one request")
    return ids, files, metadata


def _metadata(text: str, n: int) -> dict:
    try:
        return _METADATA.validate_python(json.loads(text))
    except (json.JSONDecodeError, ValidationError) as e:
        why = describe(e) if isinstance(e, ValidationError) else str(e)
        raise Problem(422, f"metadata[{n}] is not a JSON object of strings and numbers: {why}") from None


def _read_only() -> Problem:
    return Problem(409, "the index is open read-only (memory-mapped): restart the service without --index-mmap "
                   "to change it", "index-read-only")

