"""Reading a model bundle (written by `python -m trainer.export`): manifest, checksums, weights, networks.

The service depends on this format only. Weights are safetensors (tensors, never pickles), every file's
sha256 is checked against the manifest, and an unknown format or version is refused.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

FORMAT, FORMAT_VERSION = "simclr-bundle", 1
BACKBONES = {
    "resnet18": (BasicBlock, [2, 2, 2, 2]),
    "resnet34": (BasicBlock, [3, 4, 6, 3]),
    "resnet50": (Bottleneck, [3, 4, 6, 3]),
}


class BundleError(Exception):
    """A bundle that cannot be served: missing, corrupt, tampered with, or of an unknown format."""


class Projection(BaseModel):
    hidden_dim: int = Field(gt=0)
    out_dim: int = Field(gt=0)


class ClassifierSpec(BaseModel):
    hidden_dims: list[int]
    num_classes: int = Field(gt=0)


class Architecture(BaseModel):
    backbone: Literal["resnet18", "resnet34", "resnet50"]
    width: int = Field(ge=1)
    stem: Literal["cifar"]
    representation_dim: int = Field(gt=0)
    projection: Projection
    classifier: ClassifierSpec | None


class InputSpec(BaseModel):
    size: int = Field(gt=0)
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    resize: Literal["fit-bicubic"]


class Manifest(BaseModel):
    model_config = ConfigDict(extra="allow")  # newer minor fields (same version) are carried, not refused

    format: Literal["simclr-bundle"]
    format_version: int
    architecture: Architecture
    input: InputSpec
    classes: list[str]
    metrics: dict | None
    training: dict
    files: dict[str, str]


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

    @property
    def name(self) -> str:
        arch = self.manifest.architecture
        width = f"x{arch.width}" if arch.width != 1 else ""
        return f"simclr-{arch.backbone}{width}-epoch{self.manifest.training.get('checkpoint_epoch', '?')}" \
               f"-{self.fingerprint[:12]}"


def read_manifest(path: str | Path) -> tuple[Manifest, str]:
    """The bundle's manifest and fingerprint, after checking the format, the version and every file's sha256."""
    path = Path(path)
    file = path / "manifest.json"
    if not file.is_file():
        raise BundleError(f"{path} is not a model bundle: {file} does not exist "
                          f"(make one with python -m trainer.export)")
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
        raise BundleError(f"{file} is malformed: {e.errors()[0]['loc']}: {e.errors()[0]['msg']}") from None
    required = {"encoder.safetensors", "projector.safetensors"} | (
        {"classifier.safetensors"} if manifest.architecture.classifier else set())
    missing = required - manifest.files.keys()
    if missing:
        raise BundleError(f"{file} lists no checksum for {', '.join(sorted(missing))}")
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
    encoder = resnet_encoder(arch.backbone, arch.width)
    projector = nn.Sequential(nn.Linear(arch.representation_dim, arch.projection.hidden_dim, bias=False),
                              nn.BatchNorm1d(arch.projection.hidden_dim), nn.ReLU(),
                              nn.Linear(arch.projection.hidden_dim, arch.projection.out_dim))
    _load_weights(encoder, path / "encoder.safetensors")
    _load_weights(projector, path / "projector.safetensors")
    classifier = None
    if arch.classifier:
        classifier = classifier_head(arch.representation_dim, arch.classifier.hidden_dims, arch.classifier.num_classes)
        _load_weights(classifier, path / "classifier.safetensors")
        if arch.classifier.num_classes != len(manifest.classes):
            raise BundleError(f"{path}: the classifier has {arch.classifier.num_classes} outputs but the manifest "
                              f"names {len(manifest.classes)} classes")
    for net in (encoder, projector, classifier):
        if net is not None:
            net.requires_grad_(False).eval()
    return Bundle(path, manifest, fingerprint, encoder, projector, classifier)


class _WideResNet(ResNet):
    """torchvision's ResNet with every stage's channels times `width` (set on a subclass before __init__)."""

    width = 1

    def _make_layer(self, block, planes, blocks, stride=1, dilate=False):
        if planes == 64:  # the first stage reads the (widened) stem
            self.inplanes = 64 * self.width
        return super()._make_layer(block, planes * self.width, blocks, stride, dilate)


def resnet_encoder(backbone: str, width: int = 1) -> nn.Module:
    """torchvision's ResNet with the CIFAR stem (3x3 conv stride 1, no max-pool) and no fc: (N, 3, S, S) -> (N, D)."""
    block, layers = BACKBONES[backbone]
    net = type(f"ResNetx{width}", (_WideResNet,), {"width": width})(block, layers)
    net.conv1 = nn.Conv2d(3, 64 * width, kernel_size=3, stride=1, padding=1, bias=False)
    net.bn1 = nn.BatchNorm2d(64 * width)
    net.maxpool = nn.Identity()
    net.fc = nn.Identity()
    return net


def classifier_head(in_dim: int, hidden_dims: list[int], num_classes: int) -> nn.Sequential:
    """Linear, or Linear - ReLU - Dropout - Linear: the layer indices match the saved keys (0.*, 3.*)."""
    if not hidden_dims:
        return nn.Sequential(nn.Linear(in_dim, num_classes))
    if len(hidden_dims) != 1:
        raise BundleError(f"classifier hidden_dims {hidden_dims}: at most one hidden layer is supported")
    hidden = hidden_dims[0]
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Dropout(), nn.Linear(hidden, num_classes))


def _load_weights(net: nn.Module, file: Path) -> None:
    try:
        net.load_state_dict(load_safetensors(file.read_bytes()))
    except SafetensorError as e:
        raise BundleError(f"{file} is not a readable safetensors file: {e}") from None
    except RuntimeError as e:  # missing, unexpected or mis-shaped tensors
        message = " ".join(str(e).split())[:300]
        raise BundleError(f"{file} does not fit the manifest's architecture: {message}") from None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
