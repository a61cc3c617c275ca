"""The device torch runs on, chosen one way for training, evaluation and the service."""

from __future__ import annotations

import torch


def pick_device(name: str | None, error: type[Exception] = ValueError) -> torch.device:
    """The device asked for ("cpu" or "cuda"), or for None or "auto" CUDA where torch sees a GPU and the CPU
    otherwise. CUDA asked for without a GPU raises error (each side's own: the trainer's UserError, the
    service's BundleError), rather than failing at the first tensor moved there."""
    if name in (None, "auto"):
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise error("--device cuda was asked for but torch sees no CUDA GPU")
    return torch.device(name)
