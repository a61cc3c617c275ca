"""Images from a request: multipart file uploads or JSON with base64 strings, decoded into the model's input.

Both ways share one set of limits (settings.max_images per request, settings.max_image_pixels per image;
the body size is bounded by service.limits), and every bad image is a problem naming which one.
"""

from __future__ import annotations

import base64
import binascii
from typing import Annotated

from fastapi import Depends, Request
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from torch import Tensor

from contract.images import ImageError
from service.dependencies import Ready
from service.problems import Problem
from service.schemas import ImagesJSON
from service.state import ServiceState

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
    state.batcher.check_capacity()  # refused before the body is read and decoded, not after
    with state.batcher.incoming():  # a batch about to run may wait for these images
        return await _read_images(request, state)


async def _read_images(request: Request, state: ServiceState) -> Tensor:
    limit = state.settings.max_images
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "multipart/form-data":
        files = await _multipart(request, limit)
    elif content_type == "application/json":
        files = _json(await request.body())
    else:
        raise Problem(415, f"unsupported content type {content_type or '(none)'!r}: send multipart/form-data "
                      f"file uploads (field 'images') or application/json {{\"images\": [base64, ...]}}")
    if not files:
        raise Problem(422, "the request holds no images: send them as multipart files in the field 'images' or "
                      "as a JSON list of base64 strings")
    return await decode_files(files, state)


async def decode_files(files: list[tuple[str, bytes]], state: ServiceState) -> Tensor:
    """uint8 (N, 3, S, S) from (name, encoded bytes) pairs, decoded in a worker thread; a bad image or too many
    of them is a problem naming which."""
    limit = state.settings.max_images
    if len(files) > limit:
        raise Problem(413, f"too many images in one request: {len(files)}, at most {limit}", "too-many-images")
    model, max_pixels = state.model, state.settings.max_image_pixels

    def decode() -> Tensor:  # in a worker thread: decoding and resizing are CPU work
        images = []
        for name, data in files:
            try:
                images.append(model.preprocess(data, max_pixels))
            except ImageError as e:
                raise Problem(e.status, f"{name}: {e}", IMAGE_PROBLEMS[e.status]) from None
        return model.batch(images)

    return await run_in_threadpool(decode)


async def _multipart(request: Request, limit: int) -> list[tuple[str, bytes]]:
    files = []
    try:
        async with request.form(max_files=limit, max_fields=limit) as form:  # closes the spooled files after
            for i, (field, value) in enumerate(form.multi_items()):
                if not isinstance(value, UploadFile):
                    raise Problem(422, f"form field {field!r} is not a file upload: send images as files")
                name = f"{field}[{i}] ({value.filename})" if value.filename else f"{field}[{i}]"
                files.append((name, await value.read()))
    except HTTPException as e:  # Starlette's 400 for too many parts: the same 413 as the JSON way
        if "Too many" in str(e.detail):
            raise Problem(413, f"too many images or fields in one request: at most {limit}",
                          "too-many-images") from None
        raise
    return files


def _json(body: bytes) -> list[tuple[str, bytes]]:
    try:
        payload = ImagesJSON.model_validate_json(body)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(map(str, first["loc"])) or "body"
        raise Problem(422, f"invalid JSON body at {where}: {first['msg']} (expected {{\"images\": [base64, ...]}})")
    return base64_files(payload.images, "images")


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
