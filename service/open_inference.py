"""The Open Inference Protocol (KServe v2), as KServe, Triton and Seldon speak it, whatever carries it: the model's
tensors, checking a request's and computing its outputs. service/routes/open_inference.py serves it over HTTP
(REST), service/open_inference_grpc.py over gRPC.

One model, the bundle, named as GET /version names it, version "1". Its inputs (send exactly one):
`images`, UINT8 (N, 3, S, S), the pixels as the model takes them (NCHW, RGB, 0-255, already S x S: no resize),
or `image_files`, BYTES (N), encoded image files decoded and resized as /embed does. Its outputs: `embedding`
(the L2-normalised representation), `projection`, `probabilities` (with a classifier), `training_distance` and
`unlike_training_data` (with familiarity statistics); `probabilities` also as its top k classes (the classification
extension, tritonclient's class_count). Inference goes through the batcher and its admission control as /embed
does. Errors are the service's problems: 404 for another model or version, 422 for a tensor the model does not
take (name, datatype, shape, data), 400 for binary data that does not add up, 413 for more images than
--max-images.
"""

from __future__ import annotations

import importlib.metadata
import math
import struct
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch
from starlette.concurrency import run_in_threadpool
from torch import Tensor

from service.model import Outputs
from service.problems import Problem
from service.schemas import InferenceRequest, ModelMetadata, ServerMetadata, TensorMetadata
from service.state import ServiceState
from service.uploads import base64_files, check_count, decode_files

VERSION = "1"  # the bundle's name already says which bundle (its fingerprint): one version of it
IMAGES, IMAGE_FILES = "images", "image_files"
NO_IMAGES = "the batch dimension is 0"


def server_metadata() -> ServerMetadata:
    """The server's name, version and the protocol extensions it serves."""
    try:
        version = importlib.metadata.version("simclr-cifar")
    except importlib.metadata.PackageNotFoundError:  # run from a checkout that is not installed
        version = "dev"
    return ServerMetadata(name="simclr-cifar", version=version, extensions=["binary_tensor_data", "classification"])


async def read_images(payload: InferenceRequest, binary: bytes, state: ServiceState) -> Tensor:
    """The request's images as the batcher takes them (uint8 NCHW), the files among them decoded; inside
    state.batcher.incoming(), as every request that will submit reads."""
    images = await run_in_threadpool(_tensors, payload, binary, state)
    if isinstance(images, list):  # encoded files: decoded (and counted) as /embed's uploads are
        images = await decode_files(images, state)
    return images


async def infer(payload: InferenceRequest, images: Tensor, state: ServiceState) -> list[Result]:
    """The outputs the request asks for (all of them unless it names some), checked before the model runs."""
    chosen = chosen_outputs(payload, state)
    out = await state.batcher.submit(images)
    return [_result(c, out, state) for c in chosen]


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


def check_model(state: ServiceState, name: str, version: str | None) -> None:
    served = state.model.bundle.name
    if name != served:
        raise Problem(404, f"model {name!r} is not served here: this service serves {served!r} (GET "
                      f"/v2/models/{served})", "model-not-found")
    if version is not None and version != VERSION:
        raise Problem(404, f"version {version!r} of model {name!r} is not served here: its only version is "
                      f"{VERSION!r}", "model-not-found")


def model_metadata(state: ServiceState, name: str, version: str | None) -> ModelMetadata:
    check_model(state, name, version)
    model, manifest = state.model, state.model.bundle.manifest
    return ModelMetadata(name=name, versions=[VERSION],
                         platform="onnxruntime" if model.runtime.startswith("onnx") else "pytorch",
                         inputs=_inputs(state), outputs=[d.metadata() for d in _outputs(state)],
                         parameters={"classes": manifest.classes, "input_size": model.size, "runtime": model.runtime,
                                     "bundle_fingerprint": model.bundle.fingerprint})


# -- inference -------------------------------------------------------------------------------------------------

def _tensors(payload: InferenceRequest, binary: bytes, state: ServiceState) -> Tensor | list[tuple[str, bytes]]:
    """The request's images: uint8 (N, 3, S, S) from `images`, or (name, bytes) files from `image_files`; binary:
    the bytes after the JSON (REST's binary tensor extension, gRPC's raw contents). In a worker thread: a JSON
    tensor of 64 images is 200,000 numbers to check."""
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
        return _pixels(tensor.shape, tensor.data, binary if size is not None else None, state)
    if len(tensor.shape) not in (1, 2) or tensor.shape[1:] not in ([], [1]):
        raise Problem(422, f"input {IMAGE_FILES!r} has shape {tensor.shape}: it is [N] (or [N, 1]), one encoded "
                      f"image file per element")
    check_count(count, state, NO_IMAGES)
    return _byte_elements(binary, count) if size is not None else _base64_elements(tensor.data, count)


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


def chosen_outputs(payload: InferenceRequest, state: ServiceState) -> list[Chosen]:
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


@dataclass(frozen=True)
class Result:
    """An output's values as answered: its tensor's metadata and its values."""

    chosen: Chosen
    datatype: str
    values: np.ndarray

    def raw(self) -> bytes:
        """The values as binary data: row-major, little-endian."""
        return framed(self.values.reshape(-1)) if self.datatype == "BYTES" else self.values.tobytes()

    def data(self) -> list:
        """The values as JSON data: flat, BYTES as text."""
        flat = self.values.reshape(-1)
        return [e.decode() for e in flat] if self.datatype == "BYTES" else flat.tolist()


def framed(elements: Iterable[bytes]) -> bytes:
    """BYTES as binary data: each element a little-endian uint32 length, then its bytes."""
    return b"".join(struct.pack("<I", len(e)) + e for e in elements)


def _result(chosen: Chosen, out: Outputs, state: ServiceState) -> Result:
    values = _values(out, chosen.declared.name, state.model.familiarity_threshold)
    if chosen.classes is not None:
        return Result(chosen, "BYTES", _classified(values, chosen.classes, state.model.bundle.manifest.classes))
    datatype = chosen.declared.datatype
    return Result(chosen, datatype, values.numpy().astype(np.bool_ if datatype == "BOOL" else "<f4"))
