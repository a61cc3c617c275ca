from __future__ import annotations

from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Depends, Query, Request

from service.dependencies import UPLOADS_TO_MODEL, Index, Ready
from service.catalog import Where
from service.index import Hit
from service.problems import Problem, validated
from service.routes import NOT_FOUND, PROBLEMS, QueryFilter, image_url, where_of
from service.schemas import MAX_SEARCH_K, Neighbour, SearchJSON, SearchResponse, SearchResult
from service.uploads import OPENAPI_BODY, base64_files, decode_files, read_images, request_kind

router = APIRouter(tags=["search"])
K = Annotated[int, Query(ge=1, le=MAX_SEARCH_K, description="neighbours per query")]
ClassName = Annotated[str | None, Query(description="only images of this class")]
Offset = Annotated[int, Query(ge=0, le=10_000, description="hits to skip: the next page starts at offset + k")]
MinScore = Annotated[float | None, Query(ge=-1, le=1, description="only hits at least this similar (cosine)")]
SEARCH_BODY = {"requestBody": {"required": True, "content": {
    **OPENAPI_BODY["requestBody"]["content"], "application/json": {"schema": SearchJSON.model_json_schema()}}}}


async def read_body(request: Request) -> SearchJSON | None:
    """The JSON body of POST /search, or None for multipart."""
    if request_kind(request) != "json":
        return None
    return validated(SearchJSON, await request.body(),
                     '{"images": [base64, ...]} or {"embeddings": [[float, ...], ...]}')


async def read_queries(request: Request, state: Ready, index: Index,
                       body: Annotated[SearchJSON | None, Depends(read_body)]) -> np.ndarray:
    """Unit query vectors (Q, D): the request's embeddings, or its images embedded."""
    if body is not None and body.embeddings is not None:
        return _unit_vectors(body.embeddings, index.dim)
    if body is not None:  # the body is read already, with the parameters beside the images
        with state.batcher.incoming():
            images = await decode_files(base64_files(body.images, "images"), state)
    else:
        images = await read_images(request, state)
    return (await state.batcher.submit(images)).unit.numpy()


def _merged(request: Request, body: SearchJSON | None, **query: Any) -> dict[str, Any]:
    """The search parameters from the query string and the JSON body; one given in both, differently, is refused."""
    for name, value in (body.model_dump(include=set(query), exclude_none=True) if body else {}).items():
        if name in request.query_params and query[name] != value:
            raise Problem(422, f"{name} is given twice, differently: in the query string ({query[name]}) and in "
                          f"the body ({value})")
        query[name] = value
    return query


def _unit_vectors(embeddings: list[list[float]], dim: int) -> np.ndarray:
    if len({len(e) for e in embeddings}) != 1 or len(embeddings[0]) != dim:
        raise Problem(422, f"each embedding must have the index's {dim} numbers (as /embed returns them)")
    vectors = np.asarray(embeddings, dtype=np.float64)  # JSON numbers are doubles
    scale = np.abs(vectors).max(axis=1, keepdims=True)
    if not np.isfinite(vectors).all() or (scale == 0).any():
        raise Problem(422, "an embedding is zero or not finite: it has no direction to search")
    vectors /= scale  # within [-1, 1] first: the norm of huge numbers cannot overflow
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


@router.post("/search", response_model=SearchResponse, responses=PROBLEMS, openapi_extra=SEARCH_BODY,
             dependencies=[UPLOADS_TO_MODEL])
async def search_images(request: Request, queries: Annotated[np.ndarray, Depends(read_queries)],
                        body: Annotated[SearchJSON | None, Depends(read_body)], state: Ready, index: Index,
                        k: K = 10, class_name: ClassName = None, offset: Offset = 0,
                        min_score: MinScore = None, filter: QueryFilter = None) -> SearchResponse:
    """Per query image (or embedding) the k most similar indexed images, best first, after the first offset,
    optionally only those whose metadata matches filter. The parameters may come in the JSON body instead of
    the query string."""
    params = _merged(request, body, k=k, class_name=class_name, offset=offset, min_score=min_score)
    if filter and body is not None and body.filter is not None:
        raise Problem(422, "filter is given twice: in the query string and in the body")
    where = where_of(params.pop("class_name"), body.filter if body is not None and body.filter else filter)
    await _check_class(state, index, where)
    return await _search(state, index, queries, where=where, **params, root_path=request.scope.get("root_path", ""))


@router.get("/search", response_model=SearchResponse, responses=NOT_FOUND)
async def search_by_id(request: Request, state: Ready, index: Index,
                       id: Annotated[str, Query(min_length=1, description="an indexed image's id")], k: K = 10,
                       class_name: ClassName = None, offset: Offset = 0, min_score: MinScore = None,
                       filter: QueryFilter = None) -> SearchResponse:
    """The k indexed images most similar to indexed image `id`, itself left out, after the first offset."""
    where = where_of(class_name, filter)
    await _check_class(state, index, where)
    vector = await state.run_search(index.vector, id)
    if vector is None:
        raise Problem(404, f"no indexed image has id {id!r}")
    return await _search(state, index, vector[None], k, where, exclude=[id], offset=offset, min_score=min_score,
                         root_path=request.scope.get("root_path", ""))


async def _check_class(state: Ready, index: Index, where: Where | None) -> None:
    """A class_name the index does not have is a mistake worth saying (other filters may match nothing yet)."""
    condition = where.get("class") if where else None
    wanted = condition if isinstance(condition, list) else (condition or {}).get("in")
    if wanted:
        classes = await state.run_search(lambda: index.classes)
        if not set(map(str, wanted)) & set(classes):
            raise Problem(422, f"unknown class_name {wanted[0]!r}: the index has {', '.join(classes) or 'none'}")


async def _search(state: Ready, index: Index, queries: np.ndarray, k: int, where: Where | None,
                  exclude: list[str] | None = None, offset: int = 0, min_score: float | None = None,
                  root_path: str = "") -> SearchResponse:
    def search() -> tuple[list[list[Hit]], int]:  # the size too in the search thread: on Milvus a server call
        with state.metrics.search.time():
            results = index.search(queries, k, where, exclude, offset, min_score)
        return results, index.count

    results, size = await state.run_search(search)
    return SearchResponse(model=state.model.bundle.name, index_size=size,
                          results=[SearchResult(neighbours=[_neighbour(h, root_path) for h in hits])
                                   for hits in results])


def _neighbour(hit: Hit, root_path: str) -> Neighbour:
    return Neighbour(id=hit.id, score=hit.score, metadata=hit.metadata, image_url=image_url(hit.id, root_path))
