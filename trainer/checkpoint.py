"""Checkpoints written atomically and read without unpickling arbitrary objects."""

from __future__ import annotations

import os
import pickle
import re
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch

from trainer.errors import UserError

FORMAT = "simclr-checkpoint/1"
_NAME = re.compile(r"^epoch_(\d+)\.pt$")


def atomic_write(path: Path, write) -> None:
    """Call write(file) on a temporary file beside path, fsync it, then rename it over path: a reader (or a
    resumed run after a crash) sees the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def checkpoint_path(run_dir: Path, epoch: int) -> Path:
    return run_dir / "checkpoints" / f"epoch_{epoch:04d}.pt"


def list_checkpoints(run_dir: Path) -> list[Path]:
    """The run's checkpoints, oldest first."""
    folder = run_dir / "checkpoints"
    found = [p for p in folder.glob("epoch_*.pt") if _NAME.match(p.name)] if folder.is_dir() else []
    return sorted(found, key=lambda p: int(_NAME.match(p.name).group(1)))


def save(run_dir: Path, epoch: int, state: dict[str, Any], keep: int) -> Path:
    path = checkpoint_path(run_dir, epoch)
    atomic_write(path, lambda f: torch.save({"format": FORMAT, **state}, f))
    for old in list_checkpoints(run_dir)[:-keep]:
        old.unlink(missing_ok=True)
    for stale in path.parent.glob(".epoch_*.tmp"):  # left by a process killed mid-write; never a checkpoint
        stale.unlink(missing_ok=True)
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


def latest(run_dir: str | Path) -> Path:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"run directory {run_dir} does not exist")
    found = list_checkpoints(run_dir)
    if not found:
        raise UserError(f"run directory {run_dir} has no checkpoint (expected {run_dir}/checkpoints/epoch_*.pt)")
    return found[-1]
