"""The networks' input, written once: uint8 pixels scaled to [0, 1], then normalised per channel with the
bundle's mean and std (its manifest's contract.bundle.InputSpec; the trainer's are CIFAR-10's). Training,
evaluation, the ONNX graphs and the service all compute it here, so their numbers agree to the last bit."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

if TYPE_CHECKING:  # contract.bundle needs pydantic, which the GPU training machine lacks
    from contract.bundle import InputSpec

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)


def to_float(images: Tensor) -> Tensor:
    """uint8 (N, 3, H, W) -> float32 in [0, 1]."""
    return images.float().div_(255)


def normalize(x: Tensor, mean: Sequence[float] | Tensor = CIFAR_MEAN, std: Sequence[float] | Tensor = CIFAR_STD
              ) -> Tensor:
    """A float batch in [0, 1] (N, C, H, W) with each channel less its mean, over its std."""
    m = torch.as_tensor(mean, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)  # no copy when already so
    s = torch.as_tensor(std, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    return (x - m) / s


def preprocess(images: Tensor, mean: Sequence[float] | Tensor = CIFAR_MEAN,
               std: Sequence[float] | Tensor = CIFAR_STD) -> Tensor:
    """uint8 images (N, 3, H, W) -> the network's input."""
    return normalize(to_float(images), mean, std)


class Preprocess(nn.Module):
    """preprocess() with the mean and std made once, on the module's device, rather than per batch (a CUDA copy
    each time); in an exported ONNX graph they are constants."""

    def __init__(self, mean: Sequence[float] = CIFAR_MEAN, std: Sequence[float] = CIFAR_STD):
        super().__init__()
        # Not persistent: they come from the manifest, and are no weights of the bundle's.
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32), persistent=False)

    @classmethod
    def of(cls, spec: InputSpec) -> Preprocess:
        return cls(spec.mean, spec.std)

    def forward(self, images: Tensor) -> Tensor:
        return preprocess(images, self.mean, self.std)
