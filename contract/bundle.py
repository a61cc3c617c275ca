"""The model bundle: what `python -m trainer.export` writes and the service loads.

BUNDLE_DIR holds encoder.safetensors, projector.safetensors, classifier.safetensors and familiarity.safetensors
(when the run was evaluated), the ONNX graphs (model.onnx, model.int8.onnx) and manifest.json, written last:
format and version, architecture, input preprocessing, class names, evaluation metrics, a training summary and
the sha256 of every file. Manifest is the one description of that file: the writer builds it and the reader
validates it. Weights are safetensors (tensors, never pickles; float16 in a half bundle, but for familiarity's
statistics); an unknown format or version, a missing file or a wrong checksum is refused.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
import torch
from torch import Tensor, nn

from contract.files import atomic_write
from contract.images import RESIZE
from contract.networks import BACKBONES, classifier_head, projector, resnet_encoder

FORMAT, FORMAT_VERSION = "simclr-bundle", 1
ENCODER, PROJECTOR, CLASSIFIER = "encoder.safetensors", "projector.safetensors", "classifier.safetensors"
ONNX_FP32, ONNX_INT8 = "model.onnx", "model.int8.onnx"
FAMILIARITY = "familiarity.safetensors"
Fraction = Annotated[float, Field(ge=0, le=1)]
# The gate a fast runtime passes before the service runs it unasked: against fp32 on the evaluation's test set,
# less than half a point of linear (and kNN) top-1 lost, and the same top-1 class on 97% of the images and the
# same top 3 in the same order on 80%. The int8 encoder measured 98.4% and 90.4% on the reference model; the
# int8 graph that quantised the probabilities too, 42% (ties at zero behind a first class above 0.99).
MAX_ACCURACY_LOSS = 0.005
MIN_TOP1_AGREEMENT = 0.97
MIN_TOP3_ORDER_AGREEMENT = 0.80
# How the manifest's data paths are written (contract.files.recorded_path): no home directory in them.
RECORDED_PATH = "a path under the trainer's home directory written ~/... (bundles from before it: absolute)"


class BundleError(Exception):
    """A bundle that cannot be served: missing, corrupt, tampered with, or of an unknown format."""


class Projection(BaseModel):
    hidden_dim: int = Field(gt=0)
    out_dim: int = Field(gt=0)


class ClassifierSpec(BaseModel):
    hidden_dims: list[int] = Field(max_length=1)
    num_classes: int = Field(gt=0)
    temperature: float = Field(1.0, gt=0, description="the probabilities are softmax(logits / temperature): fitted "
                               "on images held out of the head's training (bundles from before it: 1)")


class Architecture(BaseModel):
    backbone: Literal[tuple(BACKBONES)]
    width: int = Field(ge=1)
    stem: Literal["cifar"]
    representation_dim: int = Field(gt=0)
    projection: Projection
    classifier: ClassifierSpec | None


class InputSpec(BaseModel):
    size: int = Field(gt=0)
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    resize: Literal[RESIZE]


class ClassScore(BaseModel):
    """One class's accuracy on the evaluation's test set."""

    model_config = ConfigDict(populate_by_name=True)

    index: int = Field(alias="class", ge=0)
    name: str
    count: int = Field(ge=0)
    top1: Fraction
    top3: Fraction
    top5: Fraction


class Protocol(BaseModel):
    """How the numbers were measured (trainer.linear_eval); its other settings are carried as they are."""

    model_config = ConfigDict(extra="allow")

    name: str  # linear, mlp or finetune
    encoder: Literal["frozen", "fine-tuned"]
    data_dir: str = Field(description=f"the evaluation data's folder: {RECORDED_PATH}")
    data_name: str | None = Field(None, description="what the evaluation data is called beside its numbers "
                                  "(evaluations from before it was recorded have none)")
    train_images: int
    val_images: int
    test_images: int
    label_fraction: float
    epochs: int
    stopping_epoch: int
    lr: float
    weight_decay: float
    seed: int


class Calibration(BaseModel):
    """The classifier's temperature, fitted on images held out of its training, and the expected calibration error
    (15 bins) of its probabilities on the test set before and after it."""

    images: int = Field(gt=0)
    temperature: float = Field(gt=0)
    test_ece_before: Fraction
    test_ece_after: Fraction
    test_nll_before: float | None = None
    test_nll_after: float | None = None


class Metrics(BaseModel):
    """The linear evaluation of the bundled checkpoint: accuracies as fractions of the test set."""

    top1: Fraction
    top3: Fraction
    top5: Fraction
    knn_top1: Fraction | None = None
    knn_top5: Fraction | None = None
    knn_k: int | None = None
    knn_temperature: float | None = None
    per_class: list[ClassScore]
    protocol: Protocol
    checkpoint: str
    calibration: Calibration | None = None


class Training(BaseModel):
    """What the bundled checkpoint came from."""

    model_config = ConfigDict(extra="allow")  # newer summaries (same version) are carried, not refused

    epochs: float
    checkpoint_epoch: int
    checkpoint: str
    batch_size: int
    optimizer: str
    lr: float
    weight_decay: float
    temperature: float
    data_dir: str = Field(description=f"the training data's folder: {RECORDED_PATH}")
    hours: float | None = Field(None, description="wall-clock hours of the epochs up to the checkpoint, summed over "
                                "every start, training steps only, as run (slowed by whatever shared the machine)")
    median_pace_hours: float | None = Field(None, description="the same epochs at the run's median epoch time "
                                            "per view size: the time it was paused or shared taken out")
    machines: list[str] = Field([], description="the machines its starts and resumes ran on (trainer.provenance)")
    commits: list[str] = Field([], description="the git commits of the code each start ran, or 'unknown'")
    recipe: dict[str, Any] | None = Field(None, description="the run's whole configuration (RUN_DIR/config.json)")


class RuntimeCheck(BaseModel):
    """A fast runtime beside fp32 (the fp32 ONNX graph) on the evaluation's test set, measured at export: its
    accuracy, and how often it gives fp32's answer. The kNN figures (k=200 over the training images, each side
    embedded by its own runtime) are measured for the int8 graph only."""

    runtime: str
    data_dir: str = Field(description=f"the evaluation data's folder: {RECORDED_PATH}")
    test_images: int = Field(gt=0)
    fp32_top1: Fraction
    top1: Fraction
    train_images: int | None = Field(None, gt=0, description="the kNN's bank")
    fp32_knn_top1: Fraction | None = None
    knn_top1: Fraction | None = None
    top1_agreement: Fraction = Field(description="test images whose first class is fp32's")
    top3_agreement: Fraction = Field(description="test images whose top 3 are fp32's three classes")
    top3_order_agreement: Fraction = Field(description="test images whose top 3 are fp32's, in fp32's order")

    @property
    def passed(self) -> bool:
        """The gate: MAX_ACCURACY_LOSS, MIN_TOP1_AGREEMENT and MIN_TOP3_ORDER_AGREEMENT all met."""
        knn_loss = 0.0 if None in (self.fp32_knn_top1, self.knn_top1) else self.fp32_knn_top1 - self.knn_top1
        return (max(self.fp32_top1 - self.top1, knn_loss) < MAX_ACCURACY_LOSS
                and self.top1_agreement >= MIN_TOP1_AGREEMENT and self.top3_order_agreement >= MIN_TOP3_ORDER_AGREEMENT)


class Familiarity(BaseModel):
    """How far an image is from the training images (contract.familiarity): the Mahalanobis distance of its unit
    representation to the nearest of the class means, under their shared covariance, both estimated on `images`
    training representations and kept in `file` ("means" (C, D), "precision" (D, D), float32). Above
    `threshold`, which `heldout_accepted` of images held out of the head's training fall within, the service says
    the image is unlike the training data."""

    file: str = FAMILIARITY
    images: int = Field(gt=0)
    threshold: float = Field(gt=0)
    heldout_images: int = Field(gt=0)
    heldout_accepted: Fraction
    test_accepted: Fraction | None = Field(None, description="the evaluation's test images within the threshold")
    rejected: dict[str, Fraction] = Field({}, description="per set of synthetic images unlike any photograph, the "
                                          "share beyond the threshold (trainer.synthetic)")


class OnnxGraphs(BaseModel):
    """The whole inference as ONNX graphs (an addition to format version 1: older readers ignore it).

    Input "images": uint8 (N, 3, S, S), normalised inside the graph; outputs "representation" (N, D),
    "projection" (N, P) and, with a classifier, "logits" (N, C), whose softmax at the classifier's temperature the
    reader takes (graphs exported before the temperature output "probabilities" instead). The int8 graph
    quantises the encoder only: the representation and the heads are float. The weights are ONNX external data
    inside the bundle's safetensors files (write_bundle links them): open a graph by its path, in the bundle
    directory.
    """

    fp32: str = ONNX_FP32
    int8: str | None = Field(None, description="statically quantised (QDQ) graph, calibrated on training images")
    int8_calibration_images: int | None = None
    opset: int


class Manifest(BaseModel):
    model_config = ConfigDict(extra="allow")  # newer minor fields (same version) are carried, not refused

    format: Literal[FORMAT] = FORMAT
    format_version: int = FORMAT_VERSION
    architecture: Architecture
    input: InputSpec
    classes: list[str]
    metrics: Metrics | None
    training: Training
    # float16 halves the files; the networks are rebuilt and run in float32 either way.
    weights_dtype: Literal["float32", "float16"] = "float32"
    onnx: OnnxGraphs | None = None
    runtime_checks: list[RuntimeCheck] = Field([], description="the fast runtimes measured against fp32 at export; "
                                               "the service runs one unasked only where its check passed")
    familiarity: Familiarity | None = None
    files: dict[str, str] = {}

    def to_json(self) -> str:
        return self.model_dump_json(indent=2, by_alias=True) + "\n"


@dataclass
class Bundle:
    """A verified bundle: its manifest, the manifest's sha256 (the bundle's identity) and the networks in
    eval mode. classifier is None when the run was not evaluated."""

    path: Path
    manifest: Manifest
    fingerprint: str
    encoder: nn.Module
    projector: nn.Module
    classifier: nn.Module | None
    familiarity: tuple[Tensor, Tensor] | None  # class means (C, D) and shared precision (D, D), float32

    @property
    def name(self) -> str:
        return bundle_name(self.manifest, self.fingerprint)


def bundle_name(manifest: Manifest, fingerprint: str) -> str:
    """The name the service gives a bundle: architecture, epoch and the start of the manifest's sha256."""
    arch = manifest.architecture
    width = f"x{arch.width}" if arch.width != 1 else ""
    return f"simclr-{arch.backbone}{width}-epoch{manifest.training.checkpoint_epoch}-{fingerprint[:12]}"


def write_bundle(path: str | Path, manifest: Manifest, weights: dict[str, dict[str, Tensor]],
                 graphs: dict[str, bytes] | None = None) -> Manifest:
    """Write weights (file name -> state_dict) as safetensors and graphs (file name -> ONNX bytes), then
    manifest.json with their sha256, and return the manifest written. Optional files left from an earlier
    export into path are removed."""
    path = Path(path)
    files = {}
    half = manifest.weights_dtype == "float16"

    def stored(name: str, v: Tensor) -> Tensor:  # the familiarity statistics stay float32: precisions pass 65,504
        dtype = torch.float16 if half and name != FAMILIARITY else torch.float32
        return (v.to(dtype) if v.is_floating_point() else v).detach().cpu().contiguous()

    blobs = {name: save_safetensors({k: stored(name, v) for k, v in state.items()}) for name, state in weights.items()}
    blobs |= {name: _reading_weights(graph, blobs) for name, graph in (graphs or {}).items()}
    for name, data in blobs.items():
        atomic_write(path / name, data)
        files[name] = hashlib.sha256(data).hexdigest()
    for stale in {CLASSIFIER, FAMILIARITY, ONNX_FP32, ONNX_INT8} - files.keys():
        (path / stale).unlink(missing_ok=True)
    manifest = manifest.model_copy(update={"files": files})
    _check_files_listed(manifest, path / "manifest.json")
    atomic_write(path / "manifest.json", manifest.to_json())
    return manifest


def _reading_weights(graph: bytes, weights: dict[str, bytes]) -> bytes:
    """graph (ONNX) whose initializers the bundle's safetensors hold already, read from there instead of stored
    twice: an initializer named "encoder.layer1.0.conv1.weight" is tensor "layer1.0.conv1.weight" of
    encoder.safetensors (the bundle file's stem and the key), linked as ONNX external data (file, offset,
    length) when its values are the file's. float16 files are read as float16 and cast to float32 by a Cast node,
    which ONNX Runtime folds once when it opens the graph: the fp32 graph of a half bundle computes with the same
    rounded weights as the torch path, and costs a few hundred KB instead of the weights' size again."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from onnx.external_data_helper import set_external_data

    stored = {}  # "encoder.layer1.0.conv1.weight" -> (file, offset, length, dtype, shape)
    for file, blob in weights.items():
        size = int.from_bytes(blob[:8], "little")  # safetensors: u64 header size, JSON header, tensor bytes
        for key, info in json.loads(blob[8:8 + size]).items():
            if key != "__metadata__" and info["dtype"] in ("F32", "F16"):
                start, end = info["data_offsets"]
                stored[f"{Path(file).stem}.{key}"] = (file, 8 + size + start, end - start, info["dtype"], info["shape"])
    model = onnx.load_from_string(graph)
    casts = []
    for tensor in model.graph.initializer:
        if tensor.name not in stored or tensor.data_type != TensorProto.FLOAT or not tensor.HasField("raw_data"):
            continue
        file, offset, length, dtype, shape = stored[tensor.name]
        values, kind = numpy_helper.to_array(tensor), np.dtype(np.float16 if dtype == "F16" else np.float32)
        on_disk = np.frombuffer(weights[file], kind, length // kind.itemsize, offset)
        if list(values.shape) != shape or not np.array_equal(values.astype(on_disk.dtype).ravel(), on_disk):
            continue  # not the file's tensor after all: it stays in the graph
        if dtype == "F16":
            casts.append(helper.make_node("Cast", [tensor.name + ".float16"], [tensor.name], to=TensorProto.FLOAT))
            tensor.name, tensor.data_type = tensor.name + ".float16", TensorProto.FLOAT16
        set_external_data(tensor, location=file, offset=offset, length=length)
        tensor.ClearField("raw_data")
        tensor.data_location = TensorProto.EXTERNAL
    nodes = casts + list(model.graph.node)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return model.SerializeToString()


def read_manifest(path: str | Path) -> tuple[Manifest, str]:
    """The bundle's manifest and fingerprint, after checking the format, the version and every file's sha256."""
    path = Path(path)
    try:
        return _read_manifest(path)
    except PermissionError as e:  # files copied or unpacked with a tight umask: another user (a container's) cannot
        raise BundleError(f"the bundle {path} is not readable by this user (uid {os.getuid()}): {e}; make it "
                          f"readable with chmod -R a+rX {path}") from None


def _read_manifest(path: Path) -> tuple[Manifest, str]:
    file = path / "manifest.json"
    if not file.is_file():
        raise BundleError(f"{path} is not a model bundle: {file} does not exist (make one with python -m "
                          f"trainer.export and name it with --bundle)")
    raw = file.read_bytes()
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BundleError(f"{file} is not valid JSON: {e}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise BundleError(f"{file} is not a {FORMAT} manifest")
    if data.get("format_version") != FORMAT_VERSION:
        raise BundleError(f"{path} has bundle format version {data.get('format_version')!r}; this service reads "
                          f"version {FORMAT_VERSION} only: export it again with a matching trainer")
    try:
        manifest = Manifest.model_validate(data)
    except ValidationError as e:
        raise BundleError(f"{file} is malformed: {describe(e)}") from None
    _check_files_listed(manifest, file)
    for name, digest in manifest.files.items():
        member = path / name
        if Path(name).name != name or not member.is_file():
            raise BundleError(f"bundle file {member} is missing")
        if _sha256(member) != digest:
            raise BundleError(f"bundle file {member} does not match its sha256 in the manifest: corrupt or altered")
    return manifest, hashlib.sha256(raw).hexdigest()


def load_bundle(path: str | Path) -> Bundle:
    """Verify the bundle at path and build its networks (eval mode, CPU)."""
    path = Path(path)
    manifest, fingerprint = read_manifest(path)
    arch = manifest.architecture
    if arch.classifier and arch.classifier.num_classes != len(manifest.classes):
        raise BundleError(f"{path}: the classifier has {arch.classifier.num_classes} outputs but the manifest "
                          f"names {len(manifest.classes)} classes")
    encoder = load_weights(resnet_encoder(arch.backbone, arch.width), path / ENCODER, BundleError)
    head = projector(arch.representation_dim, arch.projection.hidden_dim, arch.projection.out_dim)
    head = load_weights(head, path / PROJECTOR, BundleError)
    classifier = None
    if arch.classifier:
        classifier = classifier_head(arch.representation_dim, arch.classifier.num_classes, arch.classifier.hidden_dims)
        classifier = load_weights(classifier, path / CLASSIFIER, BundleError)
    for net in (encoder, head, classifier):
        if net is not None:
            net.requires_grad_(False).eval()
    familiarity = None
    if manifest.familiarity:
        file, d = path / manifest.familiarity.file, arch.representation_dim
        try:
            tensors = load_safetensors(file.read_bytes())
            familiarity = tensors["means"].float(), tensors["precision"].float()
        except (OSError, SafetensorError, KeyError) as e:
            raise BundleError(f"{file} holds no readable class means and precision: {e}") from None
        if familiarity[0].shape != (len(manifest.classes), d) or familiarity[1].shape != (d, d):
            raise BundleError(f"{file}: means {tuple(familiarity[0].shape)} and precision "
                              f"{tuple(familiarity[1].shape)} do not fit {len(manifest.classes)} classes of {d}-d")
    return Bundle(path, manifest, fingerprint, encoder, head, classifier, familiarity)


def load_weights(net: nn.Module, file: Path, error: type[Exception]) -> nn.Module:
    """net with the tensors of a safetensors file; a file that cannot be read or does not fit raises error."""
    try:
        net.load_state_dict(load_safetensors(file.read_bytes()))
    except (OSError, SafetensorError) as e:
        raise error(f"{file} is not a readable safetensors file: {e}") from None
    except RuntimeError as e:  # missing, unexpected or mis-shaped tensors
        message = " ".join(str(e).split())[:300]
        raise error(f"{file} does not fit the architecture it is meant for: {message}") from None
    return net


def describe(error: ValidationError) -> str:
    """The first problem pydantic found, as one line: where ("images.0.id: "; nothing for a lone value), and what.
    One problem to fix at a time, worded the same in the trainer's errors and the service's answers."""
    first = error.errors()[0]
    where = ".".join(map(str, first["loc"]))
    return f"{where}: {first['msg']}" if where else first["msg"]


def _check_files_listed(manifest: Manifest, file: Path) -> None:
    onnx = manifest.onnx
    required = {ENCODER, PROJECTOR} | ({CLASSIFIER} if manifest.architecture.classifier else set()) | (
        {onnx.fp32} | ({onnx.int8} if onnx.int8 else set()) if onnx else set()) | (
        {manifest.familiarity.file} if manifest.familiarity else set())
    missing = required - manifest.files.keys()
    if missing:
        raise BundleError(f"{file} lists no checksum for {', '.join(sorted(missing))}")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
