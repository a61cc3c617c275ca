"""The Open Inference Protocol (KServe v2 REST, as KServe, Triton and Seldon speak it), so that their clients
(tritonclient.http, KServe's) and the tools built on them work unchanged.

One model, the bundle, named as GET /version names it, version "1". Its inputs (send exactly one):
`images`, UINT8 (N, 3, S, S), the pixels as the model takes them (NCHW, RGB, 0-255, already S x S: no resize),
or `image_files`, BYTES (N), encoded image files decoded and resized as /embed does. Its outputs: `embedding`
(the L2-normalised representation), `projection`, `probabilities` (with a classifier), `training_distance` and
`unlike_training_data` (with familiarity statistics); `probabilities` also as its top k classes (the classification
extension, tritonclient's class_count). Tensors come as JSON or as binary data after the JSON (the
binary_tensor_data extension, what tritonclient sends by default). Inference goes through the batcher and its
admission control as /embed does, and errors are the service's problems, with the protocol's "error" member:
404 for another model or version, 422 for a tensor the model does not take (name, datatype, shape, data), 400
for binary data that does not add up, 413 for more images than --max-images.
"""

from __future__ import annotations

import importlib.metadata
import math
import struct
from dataclasses import dataclass
from typing import Annotated

import numpy as np
import torch
from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from torch import Tensor

from service.dependencies import TO_MODEL, Ready, get_state
from service.model import Outputs
from service.problems import Problem, validated
from service.routes import NOT_FOUND, PROBLEMS
from service.schemas import (InferenceOutput, InferenceRequest, InferenceResponse, ModelMetadata, ModelReady,
                             ServerLive, ServerMetadata, ServerReady, TensorMetadata)
from service.state import ServiceState
from service.uploads import base64_files, check_count, decode_files

router = APIRouter(prefix="/v2", tags=["open-inference-protocol"])

VERSION = "1"  # the bundle's name already says which bundle (its fingerprint): one version of it
IMAGES, IMAGE_FILES = "images", "image_files"
NO_IMAGES = "the batch dimension is 0"
HEADER_LENGTH = "Inference-Header-Content-Length"  # the binary tensor extension: the JSON's length in bytes
INFER_PROBLEMS = PROBLEMS | NOT_FOUND
# The answer is JSON, or with the binary tensor extension JSON followed by the tensors' bytes.
INFER_ANSWERS = {200: {"content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}}
State = Annotated[ServiceState, Depends(get_state)]


# The route reads its body itself (binary tensors may follow the JSON); service.openapi lifts the schema's $defs.
INFER_BODY = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": InferenceRequest.model_json_schema()}}}}


def _server_version() -> str:
    try:
        return importlib.metadata.version("simclr-cifar")
    except importlib.metadata.PackageNotFoundError:  # run from a checkout that is not installed
        return "dev"


@router.get("", response_model=ServerMetadata)
async def server_metadata() -> ServerMetadata:
    """The server's name, version and the protocol extensions it serves."""
    return ServerMetadata(name="simclr-cifar", version=_server_version(),
                          extensions=["binary_tensor_data", "classification"])


@router.get("/health/live", response_model=ServerLive)
async def server_live() -> ServerLive:
    """The process is up and answering (the model may still be loading); no API key needed, as /healthz."""
    return ServerLive(live=True)


@router.get("/health/ready", response_model=ServerReady, responses={503: {"model": ServerReady}})
async def server_ready(state: State) -> JSONResponse:
    """200 once the model answers inference requests, 503 until then; no API key needed, as /readyz."""
    return JSONResponse(ServerReady(ready=state.ready).model_dump(), status_code=200 if state.ready else 503)


@router.get("/models/{name}", response_model=ModelMetadata, responses=NOT_FOUND)
async def model_metadata(name: str, state: Ready) -> ModelMetadata:
    """The model's inputs and outputs: names, datatypes and shapes (-1: the batch's size)."""
    return _metadata(state, name, None)


@router.get("/models/{name}/versions/{version}", response_model=ModelMetadata, responses=NOT_FOUND)
async def model_version_metadata(name: str, version: str, state: Ready) -> ModelMetadata:
    """model_metadata, of version 1 (the only one)."""
    return _metadata(state, name, version)


@router.get("/models/{name}/ready", response_model=ModelReady, responses=NOT_FOUND)
async def model_ready(name: str, state: Ready) -> ModelReady:
    """200 when the model is loaded (503 while it loads), 404 for a model not served here."""
    _check_model(state, name, None)
    return ModelReady(name=name, ready=True)


@router.get("/models/{name}/versions/{version}/ready", response_model=ModelReady, responses=NOT_FOUND)
async def model_version_ready(name: str, version: str, state: Ready) -> ModelReady:
    """model_ready, of version 1 (the only one)."""
    _check_model(state, name, version)
    return ModelReady(name=name, ready=True)


@router.post("/models/{name}/infer", response_model=InferenceResponse, responses=INFER_PROBLEMS | INFER_ANSWERS,
             openapi_extra=INFER_BODY, dependencies=[TO_MODEL])
async def model_infer(name: str, request: Request, state: Ready) -> Response:
    """The outputs of one input tensor of images: all of them, or those the request's outputs name."""
    return await _infer(state, name, None, request)


@router.post("/models/{name}/versions/{version}/infer", response_model=InferenceResponse,
             responses=INFER_PROBLEMS | INFER_ANSWERS, openapi_extra=INFER_BODY, dependencies=[TO_MODEL])
async def model_version_infer(name: str, version: str, request: Request, state: Ready) -> Response:
    """model_infer, of version 1 (the only one)."""
    return await _infer(state, name, version, request)


# -- the model's tensors ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Declared:
    """An output: its metadata and how to take its values from the model's outputs."""

    name: str
    datatype: str
    width: int | None  # the second dimension; None: one value per image

    def metadata(self) -> TensorMetadata:
        return TensorMetadata(name=self.name, datatype=self.datatype,
                              shape=[-1] if self.width is None else [-1, self.width])


def _inputs(state: ServiceState) -> list[TensorMetadata]:
    size = state.model.size
    return [TensorMetadata(name=IMAGES, datatype="UINT8", shape=[-1, 3, size, size]),
            TensorMetadata(name=IMAGE_FILES, datatype="BYTES", shape=[-1])]


def _outputs(state: ServiceState) -> list[Declared]:
    bundle = state.model.bundle
    arch = bundle.manifest.architecture
    declared = [Declared("embedding", "FP32", arch.representation_dim),
                Declared("projection", "FP32", arch.projection.out_dim)]
    if bundle.classifier is not None:
        declared.append(Declared("probabilities", "FP32", len(bundle.manifest.classes)))
    if bundle.familiarity is not None:
        declared.append(Declared("training_distance", "FP32", None))
        if state.model.familiarity_threshold is not None:
            declared.append(Declared("unlike_training_data", "BOOL", None))
    return declared


def _values(out: Outputs, name: str, threshold: float | None) -> Tensor:
    if name == "unlike_training_data":
        return out.distance > threshold
    return {"embedding": out.unit, "projection": out.projection, "probabilities": out.probabilities,
            "training_distance": out.distance}[name]


def _check_model(state: ServiceState, name: str, version: str | None) -> None:
    served = state.model.bundle.name
    if name != served:
        raise Problem(404, f"model {name!r} is not served here: this service serves {served!r} (GET "
                      f"/v2/models/{served})", "model-not-found")
    if version is not None and version != VERSION:
        raise Problem(404, f"version {version!r} of model {name!r} is not served here: its only version is "
                      f"{VERSION!r}", "model-not-found")


def _metadata(state: ServiceState, name: str, version: str | None) -> ModelMetadata:
    _check_model(state, name, version)
    model, manifest = state.model, state.model.bundle.manifest
    return ModelMetadata(name=name, versions=[VERSION],
                         platform="onnxruntime" if model.runtime.startswith("onnx") else "pytorch",
                         inputs=_inputs(state), outputs=[d.metadata() for d in _outputs(state)],
                         parameters={"classes": manifest.classes, "input_size": model.size, "runtime": model.runtime,
                                     "bundle_fingerprint": model.bundle.fingerprint})


# -- inference -------------------------------------------------------------------------------------------------

async def _infer(state: ServiceState, name: str, version: str | None, request: Request) -> Response:
    _check_model(state, name, version)
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise Problem(415, f"Content-Encoding {encoding!r} is not accepted: send the request uncompressed")
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type not in ("", "application/json", "application/octet-stream"):
        raise Problem(415, f"unsupported content type {content_type!r}: send the inference request as "
                      f"application/json (with binary tensors after it: application/octet-stream)")
    with state.batcher.incoming():
        body = await request.body()
        header_length = request.headers.get(HEADER_LENGTH)
        payload, images = await run_in_threadpool(_parse, body, header_length, state)
        if isinstance(images, list):  # encoded files: decoded (and counted) as /embed's uploads are
            images = await decode_files(images, state)
    chosen = _chosen_outputs(payload, state)
    out = await state.batcher.submit(images)
    return _answer(payload, chosen, out, state)


def _parse(body: bytes, header_length: str | None,
           state: ServiceState) -> tuple[InferenceRequest, Tensor | list[tuple[str, bytes]]]:
    """The request and its images: uint8 (N, 3, S, S) from `images`, or (name, bytes) files from
    `image_files`. In a worker thread: a JSON tensor of 64 images is 200,000 numbers to parse and check."""
    if header_length is None:
        header, binary = body, b""
    else:
        if not header_length.strip().isdigit() or int(header_length) > len(body):
            raise Problem(400, f"{HEADER_LENGTH} {header_length!r} is not the length of the JSON at the start of "
                          f"the body ({len(body)} bytes)")
        header, binary = body[:int(header_length)], body[int(header_length):]
    payload = validated(InferenceRequest, header, 'the Open Inference Protocol\'s JSON: {"inputs": [{"name", '
                        '"shape", "datatype", "data"}]}', what="inference request")
    names = [i.name for i in payload.inputs]
    if len(names) != 1 or names[0] not in (IMAGES, IMAGE_FILES):
        raise Problem(422, f"inputs {names}: send exactly one input, {IMAGES!r} (UINT8 [N, 3, S, S]) or "
                      f"{IMAGE_FILES!r} (BYTES [N]: encoded image files)")
    (tensor,) = payload.inputs
    size = (tensor.parameters or {}).get("binary_data_size")
    if size is not None:
        if type(size) is not int or size < 0 or size != len(binary) or tensor.data is not None:
            raise Problem(400, f"input {tensor.name!r}: binary_data_size {size!r} does not match the "
                          f"{len(binary)} bytes after the JSON (or data was sent as well)")
    elif binary:
        raise Problem(400, f"{len(binary)} bytes follow the JSON but no input has a binary_data_size")
    elif tensor.data is None:
        raise Problem(422, f"input {tensor.name!r} has no data (and no binary_data_size)")
    count = tensor.shape[0] if tensor.shape else 0
    expected = _expected(tensor.name, state)
    if tensor.datatype != expected:
        accepted = "only UINT8 pixels (0-255: the model normalises them itself)" if tensor.name == IMAGES else \
            "only BYTES (each element an encoded image file)"
        raise Problem(422, f"input {tensor.name!r} is {expected}, not {tensor.datatype}: {accepted}")
    if tensor.name == IMAGES:
        return payload, _pixels(tensor.shape, tensor.data, binary if size is not None else None, state)
    if len(tensor.shape) not in (1, 2) or tensor.shape[1:] not in ([], [1]):
        raise Problem(422, f"input {IMAGE_FILES!r} has shape {tensor.shape}: it is [N] (or [N, 1]), one encoded "
                      f"image file per element")
    check_count(count, state, NO_IMAGES)
    files = _byte_elements(binary, count) if size is not None else _base64_elements(tensor.data, count)
    return payload, files


def _expected(name: str, state: ServiceState) -> str:
    return next(t.datatype for t in _inputs(state) if t.name == name)


def _pixels(shape: list[int], data: list | None, binary: bytes | None, state: ServiceState) -> Tensor:
    size = state.model.size
    if len(shape) != 4 or shape[1:] != [3, size, size]:
        raise Problem(422, f"input {IMAGES!r} has shape {shape}: this model takes [N, 3, {size}, {size}] (NCHW, RGB; "
                      f"for other sizes send the files as {IMAGE_FILES!r})")
    check_count(shape[0], state, NO_IMAGES)
    needed = math.prod(shape)
    if binary is not None:
        if len(binary) != needed:
            raise Problem(422, f"input {IMAGES!r}: {len(binary)} bytes of binary data, shape {shape} needs {needed}")
        values = np.frombuffer(binary, dtype=np.uint8)
    else:
        try:
            values = np.asarray(data).reshape(-1)
        except (ValueError, TypeError, OverflowError):
            raise Problem(422, f"input {IMAGES!r}: data is not an array of numbers (nested lists of unequal "
                          f"lengths?)") from None
        if values.size != needed:
            raise Problem(422, f"input {IMAGES!r}: data has {values.size} values, shape {shape} needs {needed}")
        if values.dtype.kind not in "iu" or values.min() < 0 or values.max() > 255:
            raise Problem(422, f"input {IMAGES!r}: data must be integers from 0 to 255 (UINT8)")
        values = values.astype(np.uint8)
    return torch.from_numpy(values.reshape(shape).copy())


def _byte_elements(binary: bytes, count: int) -> list[tuple[str, bytes]]:
    """The binary tensor extension's BYTES: each element a little-endian uint32 length and that many bytes."""
    files, at = [], 0
    while at < len(binary):
        if at + 4 > len(binary) or at + 4 + (n := struct.unpack_from("<I", binary, at)[0]) > len(binary):
            raise Problem(400, f"input {IMAGE_FILES!r}: the binary data's element {len(files)} is cut short "
                          f"(each element is a 4-byte little-endian length, then the bytes)")
        files.append((f"{IMAGE_FILES}[{len(files)}]", binary[at + 4:at + 4 + n]))
        at += 4 + n
    if len(files) != count:
        raise Problem(422, f"input {IMAGE_FILES!r}: {len(files)} elements of binary data, its shape says {count}")
    return files


def _base64_elements(data: list, count: int) -> list[tuple[str, bytes]]:
    """BYTES in JSON: each element an encoded image file as base64 (or a data: URL), one per image."""
    flat = [e for row in data for e in (row if isinstance(row, list) else [row])]
    if len(flat) != count or not all(isinstance(e, str) for e in flat):
        raise Problem(422, f"input {IMAGE_FILES!r}: data must be {count} strings (each an image file as base64 or "
                      f"a data: URL), as its shape says")
    return base64_files(flat, IMAGE_FILES)


@dataclass(frozen=True)
class Chosen:
    """An output the request asked for: as binary data or JSON, and as its top `classes` classes or whole."""

    declared: Declared
    binary: bool
    classes: int | None = None


def _chosen_outputs(payload: InferenceRequest, state: ServiceState) -> list[Chosen]:
    declared = {d.name: d for d in _outputs(state)}
    binary = (payload.parameters or {}).get("binary_data_output") is True
    if not payload.outputs:
        return [Chosen(d, binary) for d in declared.values()]
    chosen = []
    for requested in payload.outputs:
        if requested.name not in declared:
            why = " (this bundle has no classifier)" if requested.name == "probabilities" else ""
            raise Problem(422, f"output {requested.name!r} is not an output of this model{why}: its outputs are "
                          f"{', '.join(declared)}")
        parameters = requested.parameters or {}
        classes = parameters.get("classification")
        if classes is not None:
            # Triton's classification extension: k is a positive integer, and only class scores have labels.
            if type(classes) is not int or classes < 1:
                raise Problem(422, f"output {requested.name!r}: classification {classes!r} is not a number of "
                              f"classes (a positive integer)")
            if requested.name != "probabilities":
                raise Problem(422, f"output {requested.name!r} has no classes: the classification extension "
                              f"ranks 'probabilities'")
        chosen.append(Chosen(declared[requested.name], parameters.get("binary_data", binary) is True, classes))
    return chosen


def _classified(probabilities: Tensor, k: int, classes: list[str]) -> np.ndarray:
    """The classification extension's BYTES [N, k]: per image its k most probable classes, best first, each
    "probability:index:label" (the probability as Triton prints it, six decimals); all classes when fewer than k."""
    top = probabilities.topk(min(k, probabilities.shape[1]), dim=1)
    return np.array([[f"{p:f}:{c}:{classes[c]}".encode() for p, c in zip(values, ids)]
                     for values, ids in zip(top.values.tolist(), top.indices.tolist())], dtype=object)


def _answer(payload: InferenceRequest, chosen: list[Chosen], out: Outputs, state: ServiceState) -> Response:
    outputs, blobs = [], []
    for output in chosen:
        name, datatype = output.declared.name, output.declared.datatype
        values = _values(out, name, state.model.familiarity_threshold)
        if output.classes is not None:
            array, datatype = _classified(values, output.classes, state.model.bundle.manifest.classes), "BYTES"
        else:
            array = values.numpy().astype(np.bool_ if datatype == "BOOL" else "<f4")
        tensor = InferenceOutput(name=name, shape=list(array.shape), datatype=datatype)
        if output.binary:
            blobs.append(_bytes_tensor(array) if datatype == "BYTES" else array.tobytes())
            tensor.parameters = {"binary_data_size": len(blobs[-1])}
        else:
            flat = array.reshape(-1)
            tensor.data = [e.decode() for e in flat] if datatype == "BYTES" else flat.tolist()
        outputs.append(tensor)
    answer = InferenceResponse(model_name=state.model.bundle.name, model_version=VERSION, id=payload.id,
                               outputs=outputs).model_dump_json(exclude_none=True).encode()
    if not blobs:
        return Response(answer, media_type="application/json")
    return Response(answer + b"".join(blobs), media_type="application/octet-stream",
                    headers={HEADER_LENGTH: str(len(answer))})


def _bytes_tensor(array: np.ndarray) -> bytes:
    """BYTES as binary data: each element a little-endian uint32 length, then its bytes (row-major)."""
    return b"".join(struct.pack("<I", len(e)) + e for e in array.reshape(-1))
