"""The pretraining configuration: flat, documented defaults that reproduce the CIFAR-10 recipe.

Layers, later wins: these defaults < a TOML file (`--config`) < command-line flags.
The defaults are the SGD recipe of lightly's and dkobak/simclr-cifar10's CIFAR-10
benchmarks (ResNet-18, batch 512, lr 0.06 x batch/128, wd 5e-4, temperature 0.5).
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from contract.files import recorded_path
from trainer.budget import parse_duration
from trainer.cli import OneLineErrorParser, field_types, option
from trainer.cli import build_parser as build_dataclass_parser
from trainer.errors import UserError
from trainer.resolution import ResolutionSchedule


@dataclass
class Config:
    # data
    data_dir: str = option("data/cifar10", "CIFAR-10 root (torchvision layout, downloaded when missing), "
                           "an image folder train/<class>/* [test/<class>/*], or a folder of unlabelled images")
    eval_data_dir: str | None = option(None, "labelled image folder or CIFAR-10 root for the kNN monitor "
                                       "(default: --data-dir when it is labelled)")
    download: bool = option(True, "download CIFAR-10 into --data-dir when it holds no data")
    cache_dir: str = option("~/.cache/simclr-cifar", "where decoded image arrays are cached between runs")
    image_size: int = option(32, "training resolution; images of other sizes are resized to it")
    limit_train: int | None = option(None, "train on a class-balanced subset of N training images "
                                     "(default: all)")
    limit_eval: int | None = option(None, "kNN monitor queries: a class-balanced subset of N test images, or of "
                                    "the --val-split images (default: all)")
    val_split: int = option(0, "hold out N class-balanced training images from pretraining and use them as the kNN "
                            "monitor's queries instead of the test set (for choosing a recipe; 0: none)")
    knn_bank: int | None = option(None, "kNN monitor bank: a class-balanced subset of N training images "
                                  "(default: all; a subset makes the monitor cheap on a CPU)")
    # model
    backbone: str = option("resnet18", "torchvision ResNet with the CIFAR stem", ("resnet18", "resnet34", "resnet50"))
    width: int = option(1, "ResNet width multiplier (every stage's channels times this)")
    proj_hidden_dim: int | None = option(None, "projector hidden size (default: the representation size)")
    proj_dim: int = option(128, "projection (loss) dimension")
    # objective and optimisation
    temperature: float = option(0.5, "NT-Xent temperature")
    epochs: float = option(500, "pretraining epochs (a fraction cuts the last one short; the learning rate reaches "
                           "zero at the end)")
    time_budget: str | None = option(None, "train for this long instead of --epochs, e.g. 7m or 12h: the run times "
                                     "its own steps and plans the epochs that fill the budget (written to "
                                     "config.json, so that a resumed run keeps the plan)")
    batch_size: int = option(512, "global batch size (pairs of views per step, over all processes)")
    optimizer: str = option("sgd", "sgd (momentum 0.9), lars (SimCLR's) or adam", ("sgd", "lars", "adam"))
    lr: float | None = option(None, "peak learning rate (default: sgd 0.06 x batch/128, lars 1.0 x batch/256 "
                              "as google-research/simclr's CIFAR setting, adam 1e-3)")
    weight_decay: float | None = option(None, "weight decay (default: sgd 5e-4, lars 1e-4, adam 1e-6)")
    warmup_epochs: float = option(10, "linear warmup epochs before the cosine decay")
    blur: bool = option(False, "Gaussian blur augmentation (SimCLR's ImageNet views; off for CIFAR as in the paper)")
    crop_min_scale: float = option(0.08, "smallest crop area, as a fraction of the image (RandomResizedCrop's scale)")
    grayscale_p: float = option(0.2, "probability of a greyscale view")
    resolution_schedule: str | None = option(None, "train early steps on smaller views: '16:0.7,32' is 16 px for "
                                             "the first 70%% of the steps, then --image-size (default: none)")
    # run
    out: str = option("runs/simclr", "run directory: checkpoints, metrics, plots, config")
    device: str | None = option(None, "cpu or cuda (default: cuda when available)", ("cpu", "cuda"))
    precision: str = option("auto", "bf16 autocast, fp16 with a grad scaler, or fp32; auto: bf16 on CUDA, and "
                            "on a CPU where a few timed steps show it pays, else fp32",
                            ("auto", "bf16", "fp16", "fp32"))
    compile: bool = option(True, "torch.compile the training model (where it fails, the run says so and goes on "
                           "eager)")
    channels_last: bool = option(True, "channels-last memory format (faster convolutions on CPUs and GPUs)")
    seed: int = option(0, "random seed (data order, augmentations, initialisation)")
    deterministic: bool = option(False, "deterministic algorithms (slower; exact resumes)")
    checkpoint_every: int = option(10, "save a checkpoint every N epochs (and always at the end)")
    keep_checkpoints: int = option(2, "how many of the newest checkpoints to keep")
    knn_every: int = option(10, "run the kNN monitor every N epochs (and at the end); 0 disables it")
    knn_k: int = option(200, "neighbours of the kNN monitor")
    knn_temperature: float = option(0.1, "temperature of the kNN monitor's weighted votes")

    def __post_init__(self) -> None:
        if self.precision is None:  # config.json of runs from before `auto`
            self.precision = "auto"
        checks = [
            (0 < self.epochs < math.inf, "--epochs must be positive"),
            (self.batch_size >= 2, "--batch-size must be at least 2"),
            (self.image_size >= 8, "--image-size must be at least 8"),
            (self.width >= 1, "--width must be at least 1"),
            (self.temperature > 0, "--temperature must be positive"),
            (self.checkpoint_every >= 1, "--checkpoint-every must be at least 1"),
            (self.keep_checkpoints >= 1, "--keep-checkpoints must be at least 1"),
            (self.knn_every >= 0, "--knn-every must be 0 or more"),
            (0 <= self.warmup_epochs < math.inf, "--warmup-epochs must be 0 or more"),
            (self.lr is None or 0 < self.lr < math.inf, "--lr must be positive"),
            (self.weight_decay is None or 0 <= self.weight_decay < math.inf, "--weight-decay must be 0 or more"),
            (self.knn_k >= 1, "--knn-k must be at least 1"),
            (self.limit_train is None or self.limit_train >= 2, "--limit-train must be at least 2"),
            (self.limit_eval is None or self.limit_eval >= 1, "--limit-eval must be at least 1"),
            (self.val_split >= 0, "--val-split must be 0 or more"),
            (self.knn_bank is None or self.knn_bank >= 1, "--knn-bank must be at least 1"),
            (0 < self.crop_min_scale <= 1, "--crop-min-scale must be in (0, 1]"),
            (0 <= self.grayscale_p <= 1, "--grayscale-p must be in [0, 1]"),
        ]
        for f in dataclasses.fields(self):
            choices = f.metadata["choices"]
            value = getattr(self, f.name)
            if choices and value is not None and value not in choices:
                raise UserError(f"--{f.name.replace('_', '-')} must be one of {', '.join(choices)}, not {value!r}")
        for ok, message in checks:
            if not ok:
                raise UserError(message)
        ResolutionSchedule.parse(self.resolution_schedule, self.image_size)  # a bad schedule fails here, not later
        if self.time_budget is not None:
            parse_duration(self.time_budget)

    @property
    def peak_lr(self) -> float:
        if self.lr is not None:
            return self.lr
        return {"sgd": 0.06 * self.batch_size / 128, "lars": 1.0 * self.batch_size / 256, "adam": 1e-3}[self.optimizer]

    @property
    def wd(self) -> float:
        if self.weight_decay is not None:
            return self.weight_decay
        return {"sgd": 5e-4, "lars": 1e-4, "adam": 1e-6}[self.optimizer]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


PATHS = ("data_dir", "eval_data_dir", "cache_dir", "out")


def recorded_paths(config: dict[str, Any]) -> dict[str, Any]:
    """A configuration's dict (to_dict(); a recipe in a manifest, of any age) with its paths as config.json and
    the manifest record them: no home directory (contract.files.recorded_path)."""
    return config | {key: recorded_path(config[key]) for key in PATHS if config.get(key) is not None}


def build_parser(description: str | None = None) -> OneLineErrorParser:
    """One flag per Config field, plus --config and --resume."""
    parser = build_dataclass_parser(Config, "python -m trainer.pretrain", description)
    parser.add_argument("--config", help="TOML file of options (keys as below, with _ or -); flags override it")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in --out from its latest checkpoint, with its saved config")
    return parser


def load_toml(path: str | Path) -> dict[str, Any]:
    try:
        raw = tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UserError(f"config file {path} does not exist") from None
    except OSError as e:  # a folder, no permission
        raise UserError(f"config file {path} cannot be read: {e.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"config file {path} is not valid TOML: {e}") from None
    return {k.replace("-", "_"): v for k, v in raw.items()}


def make_config(*layers: dict[str, Any]) -> Config:
    """Merge option dicts (later wins) over the defaults; unknown keys and wrong types are user errors."""
    kinds = field_types(Config)
    merged: dict[str, Any] = {}
    for layer in layers:
        for key, value in layer.items():
            if key not in kinds:
                raise UserError(f"unknown option {key!r}")
            kind = kinds[key][0]
            if value is not None and not isinstance(value, kind) and not (kind is float and isinstance(value, int)):
                raise UserError(f"option {key!r} must be {kind.__name__}, not {value!r}")
            merged[key] = float(value) if kind is float and value is not None else value
    return Config(**merged)
