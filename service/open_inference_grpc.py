"""The Open Inference Protocol over gRPC (KServe v2's GRPCInferenceService, which Triton serves on port 8001), so
that tritonclient.grpc, KServe's gRPC client and the tools built on them work unchanged; the protocol itself is
service/open_inference.py, the same model, tensors and checks as /v2 over HTTP.

Served: ServerLive, ServerReady, ServerMetadata, ModelReady, ModelMetadata, ModelInfer and ModelStreamInfer
(Triton's streaming: tritonclient's start_stream and async_stream_infer); Triton's other RPCs answer
UNIMPLEMENTED. Tensors come as typed contents or as raw_input_contents; outputs go back as raw_output_contents
(what tritonclient reads). The service's problems become gRPC status codes with the same
message; the API key, when set, comes as `x-api-key` or `authorization: Bearer KEY` metadata (the health RPCs
are open, as /v2/health/* are). The messages and stubs are those tritonclient ships, compiled from Triton's
grpc_service.proto, a superset of KServe's.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial
from typing import Any

import grpc
from google.protobuf.message import Message
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as rpc

from service import open_inference as protocol
from service.auth import carries_key
from service.batching import BatcherStopped, Overloaded
from service.problems import Problem, describe
from service.schemas import InferenceRequest
from service.settings import Settings
from service.state import ServiceState

log = logging.getLogger("service")

ROUTE = "/inference.GRPCInferenceService/{}"  # the metrics' route label: the RPC's full name
OPEN = frozenset({"ServerLive", "ServerReady"})  # answered without the API key, as /v2/health/* are
# The service's problems by status; any other (400, 415, 422) is INVALID_ARGUMENT.
_CODES = {401: grpc.StatusCode.UNAUTHENTICATED, 404: grpc.StatusCode.NOT_FOUND,
          413: grpc.StatusCode.RESOURCE_EXHAUSTED, 503: grpc.StatusCode.UNAVAILABLE}
# Each content field of InferTensorContents by the datatypes that use it.
_CONTENTS = {"BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
             "INT64": "int64_contents", "UINT8": "uint_contents", "UINT16": "uint_contents",
             "UINT32": "uint_contents", "UINT64": "uint64_contents", "FP32": "fp32_contents",
             "FP64": "fp64_contents", "BYTES": "bytes_contents"}


async def start(state: ServiceState, settings: Settings) -> grpc.aio.Server:
    """The gRPC server on settings.host:settings.grpc_port, serving beside the HTTP one in this event loop (with
    --workers each worker binds the port too: gRPC sets SO_REUSEPORT)."""
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", settings.max_request_bytes),
                                      ("grpc.max_send_message_length", -1)])
    key = settings.api_key.get_secret_value().encode() if settings.api_key else None
    rpc.add_GRPCInferenceServiceServicer_to_server(InferenceService(state, key), server)
    address = f"{settings.host}:{settings.grpc_port}"
    server.add_insecure_port(address)  # raises RuntimeError when the port cannot be bound
    await server.start()
    log.info("Open Inference Protocol over gRPC on %s", address)
    return server


class InferenceService(rpc.GRPCInferenceServiceServicer):
    def __init__(self, state: ServiceState, key: bytes | None):
        self.state, self.key = state, key

    async def ServerLive(self, request: pb.ServerLiveRequest, context: grpc.aio.ServicerContext) -> Message:
        return await self._answer("ServerLive", context, lambda: pb.ServerLiveResponse(live=True))

    async def ServerReady(self, request: pb.ServerReadyRequest, context: grpc.aio.ServicerContext) -> Message:
        return await self._answer("ServerReady", context, lambda: pb.ServerReadyResponse(ready=self.state.ready))

    async def ServerMetadata(self, request: pb.ServerMetadataRequest, context: grpc.aio.ServicerContext) -> Message:
        def metadata() -> Message:
            served = protocol.server_metadata()
            return pb.ServerMetadataResponse(name=served.name, version=served.version, extensions=served.extensions)
        return await self._answer("ServerMetadata", context, metadata)

    async def ModelReady(self, request: pb.ModelReadyRequest, context: grpc.aio.ServicerContext) -> Message:
        def ready() -> Message:  # not ready (rather than an error) for a model not served, so is_model_ready is False
            try:
                protocol.check_model(self._ready(), request.name, request.version or None)
            except Problem:
                return pb.ModelReadyResponse(ready=False)
            return pb.ModelReadyResponse(ready=True)
        return await self._answer("ModelReady", context, ready)

    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context: grpc.aio.ServicerContext) -> Message:
        def metadata() -> Message:
            served = protocol.model_metadata(self._ready(), request.name, request.version or None)
            tensor = pb.ModelMetadataResponse.TensorMetadata
            return pb.ModelMetadataResponse(
                name=served.name, versions=served.versions, platform=served.platform,
                inputs=[tensor(name=t.name, datatype=t.datatype, shape=t.shape) for t in served.inputs],
                outputs=[tensor(name=t.name, datatype=t.datatype, shape=t.shape) for t in served.outputs])
        return await self._answer("ModelMetadata", context, metadata)

    async def ModelInfer(self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext) -> Message:
        return await self._answer("ModelInfer", context, partial(self._infer, request))

    async def ModelStreamInfer(self, requests: AsyncIterator[pb.ModelInferRequest],
                               context: grpc.aio.ServicerContext) -> AsyncIterator[Message]:
        """Each request of the stream answered as ModelInfer answers it, all at once rather than one after the
        other, so that a stream's requests share the batcher's batches; the responses go back as they are ready
        (each carries its request's id), and a request's problem is its response's error_message, as Triton's
        streams say it: the stream goes on."""
        answers: asyncio.Queue[Message | None] = asyncio.Queue()

        async def answer(request: pb.ModelInferRequest) -> None:
            answered = await self._respond("ModelStreamInfer", context, partial(self._infer, request))
            await answers.put(pb.ModelStreamInferResponse(error_message=answered[1]) if isinstance(answered, tuple)
                              else pb.ModelStreamInferResponse(infer_response=answered))

        async def read() -> None:
            try:
                async with asyncio.TaskGroup() as pending:
                    async for request in requests:
                        pending.create_task(answer(request))
            finally:
                await answers.put(None)  # the client closed its side and every answer is in the queue

        reader = asyncio.create_task(read())
        try:
            while (message := await answers.get()) is not None:
                yield message
            await reader  # the stream's own failure (the client cancelled it), if any
        finally:
            reader.cancel()

    async def _infer(self, request: pb.ModelInferRequest) -> Message:
        state = self._ready()
        protocol.check_model(state, request.model_name, request.model_version or None)
        with state.batcher.incoming():
            payload, binary = await run_in_threadpool(_request, request)  # 200,000 typed pixels to list
            images = await protocol.read_images(payload, binary, state)
        results = await protocol.infer(payload, images, state)
        tensor = pb.ModelInferResponse.InferOutputTensor
        return pb.ModelInferResponse(
            model_name=state.model.bundle.name, model_version=protocol.VERSION, id=request.id,
            outputs=[tensor(name=r.chosen.declared.name, datatype=r.datatype, shape=r.values.shape) for r in results],
            raw_output_contents=[r.raw() for r in results])

    def _ready(self) -> ServiceState:
        if not self.state.ready:
            raise Problem(503, "the model is still loading: retry shortly (ServerReady says when it is ready)")
        return self.state

    async def _answer(self, method: str, context: grpc.aio.ServicerContext,
                      answer: Callable[[], Message | Awaitable[Message]]) -> Message:
        """answer()'s message; or the service's problem as the RPC's gRPC status."""
        answered = await self._respond(method, context, answer)
        if isinstance(answered, tuple):
            await context.abort(*answered)
        return answered

    async def _respond(self, method: str, context: grpc.aio.ServicerContext,
                       answer: Callable[[], Message | Awaitable[Message]]) -> Message | tuple[grpc.StatusCode, str]:
        """answer()'s message, or the service's problem as a gRPC status code and message; counted in /metrics as
        HTTP requests are (route: the RPC's full name, method GRPC, status: the gRPC code)."""
        started, code, detail = time.perf_counter(), grpc.StatusCode.OK, ""
        try:
            if method not in OPEN:
                self._authorize(context)
            message = answer()
            return await message if isinstance(message, Awaitable) else message
        except Problem as e:
            code, detail = _CODES.get(e.status, grpc.StatusCode.INVALID_ARGUMENT), e.detail
        except Overloaded as e:
            code, detail = grpc.StatusCode.UNAVAILABLE, f"{e}: retry after {e.retry_after_s:.0f} s"
        except BatcherStopped as e:
            code, detail = grpc.StatusCode.UNAVAILABLE, f"{e}: retry shortly"
        except Exception:
            log.exception("unexpected error on gRPC %s", method)
            code, detail = grpc.StatusCode.INTERNAL, "internal error: the server logged it"
        finally:
            metrics = self.state.metrics
            metrics.requests.labels(ROUTE.format(method), "GRPC", code.name).inc()
            metrics.latency.labels(ROUTE.format(method)).observe(time.perf_counter() - started)
        return code, detail

    def _authorize(self, context: grpc.aio.ServicerContext) -> None:
        if self.key is None:
            return
        metadata = {k.lower(): v.encode() for k, v in context.invocation_metadata() or () if isinstance(v, str)}
        if not carries_key(metadata.get("x-api-key"), metadata.get("authorization"), self.key):
            raise Problem(401, "this service needs an API key: send it as x-api-key or authorization: Bearer KEY "
                          "metadata")


def _request(request: pb.ModelInferRequest) -> tuple[InferenceRequest, bytes]:
    """The gRPC request as the protocol's JSON request and the binary data after it (raw_input_contents, or
    typed BYTES contents framed as the binary tensor extension frames them)."""
    inputs, binary = [], b""
    for i, tensor in enumerate(request.inputs):
        described: dict[str, Any] = {"name": tensor.name, "datatype": tensor.datatype, "shape": list(tensor.shape),
                                     "parameters": _parameters(tensor.parameters)}
        if i < len(request.raw_input_contents):
            binary = request.raw_input_contents[i]
            described["parameters"]["binary_data_size"] = len(binary)
        elif tensor.datatype == "BYTES":
            binary = protocol.framed(tensor.contents.bytes_contents)
            described["parameters"]["binary_data_size"] = len(binary)
        else:
            described["data"] = list(getattr(tensor.contents, _CONTENTS.get(tensor.datatype, "uint_contents")))
        inputs.append(described)
    outputs = [{"name": o.name, "parameters": _parameters(o.parameters)} for o in request.outputs]
    try:
        payload = InferenceRequest.model_validate({"id": request.id or None, "inputs": inputs,
                                                   "outputs": outputs or None,
                                                   "parameters": _parameters(request.parameters)})
    except ValidationError as e:
        raise Problem(422, f"invalid inference request: {describe(e)}") from None
    return payload, binary


def _parameters(parameters: Any) -> dict[str, Any]:
    """A protobuf map of InferParameter as plain values."""
    return {name: getattr(value, value.WhichOneof("parameter_choice")) for name, value in parameters.items()
            if value.WhichOneof("parameter_choice")}

