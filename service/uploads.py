"""Images from a request: multipart file uploads or JSON with base64 strings, decoded into the model's input.

Both ways share one set of limits (settings.max_images per request, settings.max_image_pixels per image;
the body size is bounded by service.limits), and every bad image is a problem naming which one.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from typing import Annotated, TypeVar

from fastapi import Depends, Request
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from torch import Tensor

from contract.images import ImageError, fit, open_image
from service.dependencies import Ready
from service.index import make_thumbnail
from service.problems import Problem, validated
from service.schemas import ImagesJSON
from service.state import ServiceState

R = TypeVar("R")
# The kind of problem each status of contract.images.ImageError is.
IMAGE_PROBLEMS = {413: "image-too-large", 415: "unsupported-image-format", 422: "invalid-image"}

# The request body both content types take, for the OpenAPI docs (the route reads the body itself).
OPENAPI_BODY = {"requestBody": {"required": True, "content": {
    "multipart/form-data": {"schema": {"type": "object", "required": ["images"], "properties": {
        "images": {"type": "array", "minItems": 1, "items": {"type": "string", "format": "binary"}}}}},
    "application/json": {"schema": ImagesJSON.model_json_schema()},
}}}


async def read_images(request: Request, state: Ready) -> Tensor:
    """uint8 (N, 3, S, S): the request's images, preprocessed as the evaluation did."""
    with state.batcher.incoming():
        return await _read_images(request, state)


def request_kind(request: Request) -> str:
    """multipart or json, by the request's content type; anything else is refused (415)."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "multipart/form-data":
        return "multipart"
    if content_type == "application/json":
        return "json"
    raise Problem(415, f"unsupported content type {content_type or '(none)'!r}: send multipart/form-data "
                  f"file uploads (field 'images') or application/json {{\"images\": [...]}}")


async def _read_images(request: Request, state: ServiceState) -> Tensor:
    limit = state.settings.max_images
    if request_kind(request) == "multipart":
        files, _, _ = await read_multipart(request, limit)
    else:
        files = _json(await request.body())
    return await decode_files(files, state)


async def decode_files(files: list[tuple[str, bytes]], state: ServiceState) -> Tensor:
    """uint8 (N, 3, S, S) from (name, encoded bytes) pairs, decoded in a worker thread; no image, a bad one or
    too many of them is a problem naming which."""
    check_count(len(files), state)
    model, max_pixels = state.model, state.settings.max_image_pixels

    def decode() -> Tensor:  # in a worker thread: decoding and resizing are CPU work
        return model.batch([_decoded(name, lambda: model.preprocess(data, max_pixels)) for name, data in files])

    return await run_in_threadpool(decode)


async def decode_for_index(files: list[tuple[str, bytes]], state: ServiceState,
                           thumbnail_size: int) -> tuple[Tensor, list[bytes]]:
    """decode_files's batch, and each image's thumbnail (JPEG) for the index."""
    check_count(len(files), state)
    model, max_pixels = state.model, state.settings.max_image_pixels

    def decode() -> tuple[Tensor, list[bytes]]:
        images = [_decoded(name, lambda: open_image(data, max_pixels)) for name, data in files]
        return model.batch([fit(img, model.size) for img in images]), [make_thumbnail(img, thumbnail_size)
                                                                        for img in images]

    return await run_in_threadpool(decode)


def check_count(count: int, state: ServiceState, how: str = "send them as multipart files in the field "
                "'images' or as a JSON list of base64 strings") -> None:
    """A request's number of images within --max-images (413), and not none (422, saying how to send them)."""
    if count < 1:
        raise Problem(422, f"the request holds no images: {how}")
    if count > state.settings.max_images:
        raise Problem(413, f"too many images in one request: {count}, at most {state.settings.max_images}",
                      "too-many-images")


def _decoded(name: str, decode: Callable[[], R]) -> R:
    try:
        return decode()
    except ImageError as e:
        raise Problem(e.status, f"{name}: {e}", IMAGE_PROBLEMS[e.status]) from None


async def read_multipart(request: Request, limit: int, text_fields: tuple[str, ...] = ()
                         ) -> tuple[list[tuple[str, bytes]], list[str | None], dict[str, list[str]]]:
    """A multipart body's file uploads as (name for messages, bytes), their file names, and the values of the
    text fields named in text_fields (any other text field is refused)."""
    files, filenames, fields = [], [], {}
    try:
        async with request.form(max_files=limit, max_fields=limit * (1 + len(text_fields))) as form:
            for i, (field, value) in enumerate(form.multi_items()):
                if isinstance(value, UploadFile):
                    name = f"{field}[{i}] ({value.filename})" if value.filename else f"{field}[{i}]"
                    files.append((name, await value.read()))
                    filenames.append(value.filename)
                elif field in text_fields:
                    fields.setdefault(field, []).append(value)
                else:
                    raise Problem(422, f"form field {field!r} is not a file upload: send images as files")
    except HTTPException as e:  # Starlette's 400 for too many parts: the same 413 as the JSON way
        if "Too many" in str(e.detail):
            raise Problem(413, f"too many images or fields in one request: at most {limit}",
                          "too-many-images") from None
        raise
    return files, filenames, fields


def _json(body: bytes) -> list[tuple[str, bytes]]:
    return base64_files(validated(ImagesJSON, body, '{"images": [base64, ...]}').images, "images")


def base64_files(texts: list[str], field: str) -> list[tuple[str, bytes]]:
    """(name, bytes) of base64 strings (a data: URL prefix, as browsers make them, is accepted)."""
    files = []
    for i, text in enumerate(texts):
        if text.startswith("data:"):
            text = text.partition(",")[2]
        try:
            files.append((f"{field}[{i}]", base64.b64decode(text, validate=True)))
        except (binascii.Error, ValueError):
            raise Problem(422, f"{field}[{i}] is not valid base64 (an image as base64 or a data: URL)") from None
    return files


Images = Annotated[Tensor, Depends(read_images)]
