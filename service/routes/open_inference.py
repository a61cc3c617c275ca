"""The Open Inference Protocol over HTTP (KServe v2 REST, as KServe, Triton and Seldon serve it), so that their
clients (tritonclient.http, KServe's) and the tools built on them work unchanged; the protocol itself (tensors,
outputs, errors) is service/open_inference.py.

Tensors come as JSON or as binary data after the JSON (the binary_tensor_data extension, what tritonclient sends
by default), both ways. Errors are the service's problems with the protocol's "error" member, and 415 for a
compressed body or another content type.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from service import open_inference as protocol
from service.dependencies import TO_MODEL, Ready, get_state
from service.problems import Problem, validated
from service.routes import NOT_FOUND, PROBLEMS
from service.schemas import (InferenceOutput, InferenceRequest, InferenceResponse, ModelMetadata, ModelReady,
                             ServerLive, ServerMetadata, ServerReady)
from service.state import ServiceState

router = APIRouter(prefix="/v2", tags=["open-inference-protocol"])

HEADER_LENGTH = "Inference-Header-Content-Length"  # the binary tensor extension: the JSON's length in bytes
INFER_PROBLEMS = PROBLEMS | NOT_FOUND
# The answer is JSON, or with the binary tensor extension JSON followed by the tensors' bytes.
INFER_ANSWERS = {200: {"content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}}
State = Annotated[ServiceState, Depends(get_state)]


# The route reads its body itself (binary tensors may follow the JSON); service.openapi lifts the schema's $defs.
INFER_BODY = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": InferenceRequest.model_json_schema()}}}}


@router.get("", response_model=ServerMetadata)
async def server_metadata() -> ServerMetadata:
    """The server's name, version and the protocol extensions it serves."""
    return protocol.server_metadata()


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
    return protocol.model_metadata(state, name, None)


@router.get("/models/{name}/versions/{version}", response_model=ModelMetadata, responses=NOT_FOUND)
async def model_version_metadata(name: str, version: str, state: Ready) -> ModelMetadata:
    """model_metadata, of version 1 (the only one)."""
    return protocol.model_metadata(state, name, version)


@router.get("/models/{name}/ready", response_model=ModelReady, responses=NOT_FOUND)
async def model_ready(name: str, state: Ready) -> ModelReady:
    """200 when the model is loaded (503 while it loads), 404 for a model not served here."""
    protocol.check_model(state, name, None)
    return ModelReady(name=name, ready=True)


@router.get("/models/{name}/versions/{version}/ready", response_model=ModelReady, responses=NOT_FOUND)
async def model_version_ready(name: str, version: str, state: Ready) -> ModelReady:
    """model_ready, of version 1 (the only one)."""
    protocol.check_model(state, name, version)
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


async def _infer(state: ServiceState, name: str, version: str | None, request: Request) -> Response:
    protocol.check_model(state, name, version)
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise Problem(415, f"Content-Encoding {encoding!r} is not accepted: send the request uncompressed")
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type not in ("", "application/json", "application/octet-stream"):
        raise Problem(415, f"unsupported content type {content_type!r}: send the inference request as "
                      f"application/json (with binary tensors after it: application/octet-stream)")
    with state.batcher.incoming():
        body = await request.body()
        payload, binary = await run_in_threadpool(_request, body, request.headers.get(HEADER_LENGTH))
        images = await protocol.read_images(payload, binary, state)
    results = await protocol.infer(payload, images, state)
    return _answer(payload, results, state)


def _request(body: bytes, header_length: str | None) -> tuple[InferenceRequest, bytes]:
    """The request's JSON, validated, and the binary data after it."""
    if header_length is None:
        header, binary = body, b""
    else:
        if not (header_length.isascii() and header_length.strip().isdigit()) or int(header_length) > len(body):
            raise Problem(400, f"{HEADER_LENGTH} {header_length!r} is not the length of the JSON at the start of "
                          f"the body ({len(body)} bytes)")
        header, binary = body[:int(header_length)], body[int(header_length):]
    return validated(InferenceRequest, header, 'the Open Inference Protocol\'s JSON: {"inputs": [{"name", "shape", '
                     '"datatype", "data"}]}', what="inference request"), binary


def _answer(payload: InferenceRequest, results: list[protocol.Result], state: ServiceState) -> Response:
    """JSON, or the binary tensor extension's JSON followed by the outputs asked for as binary data."""
    outputs, blobs = [], []
    for result in results:
        tensor = InferenceOutput(name=result.chosen.declared.name, shape=list(result.values.shape),
                                 datatype=result.datatype)
        if result.chosen.binary:
            blobs.append(result.raw())
            tensor.parameters = {"binary_data_size": len(blobs[-1])}
        else:
            tensor.data = result.data()
        outputs.append(tensor)
    answer = InferenceResponse(model_name=state.model.bundle.name, model_version=protocol.VERSION, id=payload.id,
                               outputs=outputs).model_dump_json(exclude_none=True).encode()
    if not blobs:
        return Response(answer, media_type="application/json")
    return Response(answer + b"".join(blobs), media_type="application/octet-stream",
                    headers={HEADER_LENGTH: str(len(answer))})
