"""A pretraining run's directory, and the one place that knows its layout:

    RUN_DIR/config.json                  the resolved configuration (pretrain writes it, paths under the home
                                         directory as ~/...; resume, evaluation and export read it)
    RUN_DIR/checkpoints/epoch_NNNN.pt    the newest few checkpoints
    RUN_DIR/metrics.jsonl, curves.png, tensorboard/
    RUN_DIR/starts.jsonl                 each start and resume: its machine and git commit (trainer.provenance)
    RUN_DIR/budget.json                  a --time-budget run's plans (trainer.budget)
    RUN_DIR/features/                    frozen features cached by the linear evaluation
    RUN_DIR/eval[-VARIANT]/              linear evaluation outputs (export bundles eval/)
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from contract.files import atomic_write, recorded_path
from trainer import checkpoint
from trainer.config import Config, make_config, recorded_paths
from trainer.errors import UserError
from trainer.models import SimCLR

_CHECKPOINT = re.compile(r"^epoch_(\d+)\.pt$")


class RunDir:
    def __init__(self, path: str | Path):
        self.path = Path(path).expanduser()  # config.json records --out under the home directory as ~/...
        self.config_file = self.path / "config.json"
        self.checkpoints = self.path / "checkpoints"
        self.metrics = self.path / "metrics.jsonl"
        self.starts = self.path / "starts.jsonl"
        self.budget = self.path / "budget.json"
        self.curves = self.path / "curves.png"
        self.tensorboard = self.path / "tensorboard"
        self.features = self.path / "features"

    def __str__(self) -> str:
        return str(self.path)

    def eval_dir(self, *variant: str) -> Path:
        return self.path / "-".join(["eval", *variant])

    def read_config(self) -> Config:
        """The run's saved configuration; a missing or unreadable one is a UserError saying which."""
        if not self.path.is_dir():
            raise UserError(f"run directory {self.path} does not exist")
        if not self.config_file.is_file():
            raise UserError(f"{self.path} is not a pretraining run: {self.config_file} does not exist")
        return make_config(self.read_json(self.config_file))

    def write_config(self, config: Config) -> None:
        atomic_write(self.config_file, json.dumps(recorded_paths(config.to_dict()), indent=2))

    @staticmethod
    def read_json(path: Path) -> Any:
        try:
            return json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise UserError(f"{path} is not valid JSON: {e}") from None

    def checkpoint(self, epoch: int) -> Path:
        return self.checkpoints / f"epoch_{epoch:04d}.pt"

    def list_checkpoints(self) -> list[Path]:
        """The run's checkpoints, oldest first."""
        found = [p for p in self.checkpoints.glob("epoch_*.pt") if _CHECKPOINT.match(p.name)]
        return sorted(found, key=lambda p: int(_CHECKPOINT.match(p.name).group(1)))

    def latest_checkpoint(self) -> Path:
        if not self.path.is_dir():
            raise UserError(f"run directory {self.path} does not exist")
        found = self.list_checkpoints()
        if not found:
            raise UserError(f"run directory {self.path} has no checkpoint (expected {self.checkpoints}/epoch_*.pt)")
        return found[-1]

    def save_checkpoint(self, epoch: int, state: dict[str, Any], keep: int) -> Path:
        """Save epoch's checkpoint, then delete all but the newest keep and any half-written leftovers."""
        path = checkpoint.save(self.checkpoint(epoch), state)
        for old in self.list_checkpoints()[:-keep]:
            old.unlink(missing_ok=True)
        for stale in self.checkpoints.glob(".epoch_*.tmp"):  # left by a process killed mid-write
            stale.unlink(missing_ok=True)
        return path

    def load_model(self, config: Config, path: Path) -> tuple[SimCLR, dict[str, Any]]:
        """The run's SimCLR with the weights of checkpoint path, and the checkpoint's contents."""
        state = checkpoint.load(path)
        model = SimCLR(config.backbone, config.width, config.proj_hidden_dim, config.proj_dim)
        try:
            model.load_state_dict(state["model"])
        except (RuntimeError, KeyError) as e:
            raise UserError(f"checkpoint {path} does not fit the run's {config.backbone} (width {config.width}): "
                            f"{str(e).splitlines()[0]}") from None
        return model, state

    def relative(self, path: Path) -> str:
        """path as the run's files name it: relative to the run directory when inside it, else absolute (under the
        home directory as "~/...", as contract.files.recorded_path writes every path the manifest carries)."""
        try:
            return str(path.resolve().relative_to(self.path.resolve()))
        except ValueError:
            return recorded_path(path.resolve())

    def resolve(self, named: str) -> Path:
        """The file a name that relative() wrote stands for."""
        return self.path / Path(named).expanduser()
