"""Preprocessing and inference: image bytes -> the evaluation's input tensor -> representation, projection,
class probabilities.

Preprocessing is the one the linear evaluation used: contract.images decodes and resizes to the manifest's
input size, then the pixels are scaled to [0, 1] and normalised with the manifest's mean and std.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from contract.bundle import Bundle
from contract.images import decode_image

@dataclass
class Outputs:
    """Per image: raw representation (N, D), the same L2-normalised, projection (N, P), class probabilities
    (N, C) or None."""

    representation: Tensor
    unit: Tensor
    projection: Tensor
    probabilities: Tensor | None

    def __getitem__(self, rows: slice) -> Outputs:
        """The outputs of some of the images: how the batcher hands each request its own rows."""
        probabilities = self.probabilities[rows] if self.probabilities is not None else None
        return Outputs(self.representation[rows], self.unit[rows], self.projection[rows], probabilities)


class Model:
    """A loaded bundle's networks with its preprocessing; infer() is what the batcher runs.

    The encoder runs channels-last (uint8 images arrive in that layout, and the convolutions are faster in
    it), under bf16 autocast when precision is "bf16"; the heads and every output stay float32.
    """

    def __init__(self, bundle: Bundle, precision: str = "fp32"):
        self.bundle, self.precision = bundle, precision
        spec = bundle.manifest.input
        self.size = spec.size
        self.mean = torch.tensor(spec.mean).view(1, 3, 1, 1)
        self.std = torch.tensor(spec.std).view(1, 3, 1, 1)
        bundle.encoder.to(memory_format=torch.channels_last)

    def preprocess(self, data: bytes, max_pixels: int) -> np.ndarray:
        """uint8 (S, S, 3) from encoded image bytes; raises ImageError."""
        return decode_image(data, self.size, max_pixels)

    @staticmethod
    def batch(images: list[np.ndarray]) -> Tensor:
        """uint8 (N, 3, S, S), a view of the images stacked by numpy: no torch kernel runs here (see infer)."""
        return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2)

    @torch.inference_mode()
    def infer(self, images: Tensor) -> Outputs:
        """Outputs of uint8 images (N, 3, S, S), any strides. The heads cost almost nothing next to the encoder,
        so every output is computed and each route takes what it needs. All of it runs in the service's one
        inference thread: see service.state for why no other thread runs torch's parallel kernels."""
        x = (images.contiguous(memory_format=torch.channels_last).float() / 255 - self.mean) / self.std
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.precision == "bf16"):
            h = self.bundle.encoder(x)
        h = h.float()
        z = self.bundle.projector(h)
        head = self.bundle.classifier
        return Outputs(h, F.normalize(h, dim=1), z, F.softmax(head(h), dim=1) if head is not None else None)


def pick_precision(model: Model, asked: str, batch: int = 32, min_gain: float = 1.15) -> tuple[str, str]:
    """The precision to serve with, and why: as asked, or for "auto" bf16 where a few timed batches show it
    at least min_gain times faster than fp32 (CPUs with fast bf16 dot products; on others it is slower)."""
    if asked != "auto":
        model.precision = asked
        return asked, "as asked"
    images = torch.randint(0, 256, (batch, 3, model.size, model.size), dtype=torch.uint8)
    seconds = {}
    for precision in ("fp32", "bf16", "fp32", "bf16"):  # in turns, so that a busy moment hits both
        model.precision = precision
        model.infer(images)  # warm-up: the first call of a precision allocates
        started = time.perf_counter()
        model.infer(images)
        seconds[precision] = min(seconds.get(precision, float("inf")), time.perf_counter() - started)
    gain = seconds["fp32"] / seconds["bf16"]
    model.precision = "bf16" if gain >= min_gain else "fp32"
    return model.precision, f"auto: bf16 measured {gain:.2f}x fp32 here"
