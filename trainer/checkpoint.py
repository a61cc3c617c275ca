"""Checkpoints: what a resumed run needs, written atomically and read without unpickling arbitrary objects.

TrainingState pairs what is saved with how it is restored, so that the two cannot drift apart.
"""

from __future__ import annotations

import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from contract.files import atomic_write
from trainer.errors import UserError

FORMAT = "simclr-checkpoint/1"


def save(path: Path, state: dict[str, Any]) -> Path:
    atomic_write(path, lambda f: torch.save({"format": FORMAT, **state}, f))
    return path


def load(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """A checkpoint's contents; a missing, truncated, corrupt or foreign file is a UserError naming it."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile, pickle.UnpicklingError) as e:
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"checkpoint {path} is corrupt or truncated ({first_line})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise UserError(f"{path} is not a checkpoint of this trainer (expected format {FORMAT})")
    return state


@dataclass
class TrainingState:
    """The objects a pretraining run resumes from: captured by state_dict, put back by load_state_dict."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler

    def state_dict(self, epoch: int, step: int, config: dict[str, Any], classes: list[str]) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(), "epoch": epoch,
                "step": step, "rng": torch.get_rng_state(), "config": config, "classes": classes}

    def load_state_dict(self, state: dict[str, Any], source: Path) -> int:
        """Restore everything saved; returns the epoch the checkpoint ended. source names it in errors."""
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError, KeyError) as e:
            raise UserError(f"checkpoint {source} does not fit this configuration: {str(e).splitlines()[0]}") from None
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["rng"].cpu())
        return state["epoch"]
