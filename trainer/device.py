"""Which device a command runs on."""

from __future__ import annotations

import torch

from trainer.errors import UserError


def pick_device(name: str | None) -> torch.device:
    """The device asked for ("cpu" or "cuda"), or CUDA when torch sees a GPU and the CPU otherwise."""
    name = name or ("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but torch sees no CUDA GPU")
    return torch.device(name)
