"""Export a pretraining run as a model bundle: the one contract between the trainer and the service.

    python -m trainer.export --run runs/simclr --out bundles/r18                 # the evaluated checkpoint
    python -m trainer.export --run runs/simclr --out bundles/r18 --checkpoint runs/simclr/checkpoints/epoch_0100.pt

BUNDLE_DIR gets encoder.safetensors, projector.safetensors, classifier.safetensors (when RUN_DIR/eval holds a
linear evaluation of the same checkpoint) and manifest.json, written last: format and version, architecture,
input preprocessing, class names, evaluation metrics, a training summary and the sha256 of every file.
Safetensors holds tensors only, so reading a bundle never unpickles anything.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from trainer import checkpoint
from trainer.augment import CIFAR_MEAN, CIFAR_STD
from trainer.config import OneLineErrorParser, make_config
from trainer.errors import UserError
from trainer.models import SimCLR

FORMAT, FORMAT_VERSION = "simclr-bundle", 1
# How trainer.data decodes images of another size: convert("RGB"), then ImageOps.fit (shorter side, centre crop).
RESIZE = "fit-bicubic"


def export(run_dir: str | Path, out: str | Path, checkpoint_file: str | Path | None = None) -> dict[str, Any]:
    """Write the bundle of run_dir's checkpoint (default: the one RUN_DIR/eval evaluated, else the latest) into
    out and return its manifest."""
    run_dir, out = Path(run_dir), Path(out)
    config_file = run_dir / "config.json"
    if not config_file.is_file():
        raise UserError(f"{run_dir} is not a pretraining run: {config_file} does not exist")
    config = make_config(json.loads(config_file.read_text()))
    head_spec = _read_json(run_dir / "eval" / "classifier.json")
    if checkpoint_file is None:
        checkpoint_file = run_dir / head_spec["checkpoint"] if head_spec else checkpoint.latest(run_dir)
    checkpoint_file = Path(checkpoint_file)
    state = checkpoint.load(checkpoint_file)
    if head_spec and (run_dir / head_spec["checkpoint"]).resolve() != checkpoint_file.resolve():
        raise UserError(f"{run_dir}/eval evaluated {head_spec['checkpoint']}, not {checkpoint_file}: evaluate "
                        f"that checkpoint first (python -m trainer.linear_eval --checkpoint ...) or export the "
                        f"evaluated one")

    model = SimCLR(config.backbone, config.width, config.proj_hidden_dim, config.proj_dim)
    try:
        model.load_state_dict(state["model"])
    except (RuntimeError, KeyError) as e:
        raise UserError(f"checkpoint {checkpoint_file} does not fit the run's {config.backbone} "
                        f"(width {config.width}): {str(e).splitlines()[0]}") from None
    tensors = {"encoder.safetensors": model.encoder.state_dict(), "projector.safetensors": model.projector.state_dict()}
    classes = list(state.get("classes") or [])
    if head_spec:
        tensors["classifier.safetensors"] = _read_head(run_dir / "eval", head_spec, model.feature_dim)
        classes = list(head_spec["classes"])

    files = {}
    for name, weights in tensors.items():
        data = save_safetensors({k: v.detach().cpu().contiguous() for k, v in weights.items()})
        checkpoint.atomic_write(out / name, lambda f: f.write(data))
        files[name] = hashlib.sha256(data).hexdigest()
    for stale in {"classifier.safetensors"} - files.keys():  # re-exporting an unevaluated run over an old bundle
        (out / stale).unlink(missing_ok=True)

    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "architecture": {
            "backbone": config.backbone, "width": config.width, "stem": "cifar",
            "representation_dim": model.feature_dim,
            "projection": {"hidden_dim": model.projector[0].out_features, "out_dim": model.projector[3].out_features},
            "classifier": {"hidden_dims": list(head_spec["hidden_dims"]), "num_classes": len(classes)}
            if head_spec else None,
        },
        "input": {"size": config.image_size, "mean": list(CIFAR_MEAN), "std": list(CIFAR_STD), "resize": RESIZE},
        "classes": classes,
        "metrics": _metrics(run_dir / "eval" / "metrics.json") if head_spec else None,
        "training": {
            "epochs": config.epochs, "checkpoint_epoch": state["epoch"],
            "checkpoint": _relative(checkpoint_file, run_dir),
            "batch_size": config.batch_size, "optimizer": config.optimizer, "lr": config.peak_lr,
            "weight_decay": config.wd, "temperature": config.temperature, "data_dir": config.data_dir,
        },
        "files": files,
    }
    text = json.dumps(manifest, indent=2) + "\n"
    checkpoint.atomic_write(out / "manifest.json", lambda f: f.write(text.encode()))
    return manifest


def _read_json(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path} is not valid JSON: {e}") from None


def _read_head(eval_dir: Path, spec: dict[str, Any], feature_dim: int) -> dict[str, torch.Tensor]:
    """The linear evaluation's head, checked against its classifier.json and the encoder it reads."""
    path = eval_dir / "classifier.safetensors"
    try:
        weights = load_safetensors(path.read_bytes())
    except (OSError, SafetensorError) as e:
        raise UserError(f"cannot read the classifier {path}: {e}") from None
    dims = [spec["input_dim"], *spec["hidden_dims"], len(spec["classes"])]
    expected = {}
    for i, (d_in, d_out) in enumerate(zip(dims, dims[1:])):
        layer = 3 * i  # Sequential(Linear, ReLU, Dropout, Linear): the Linears sit at 0 and 3
        expected |= {f"{layer}.weight": (d_out, d_in), f"{layer}.bias": (d_out,)}
    found = {k: tuple(v.shape) for k, v in weights.items()}
    if spec["input_dim"] != feature_dim or found != expected:
        raise UserError(f"{path} does not match its classifier.json and the {feature_dim}-d encoder: "
                        f"expected {expected}, found {found}")
    return weights


def _metrics(path: Path) -> dict[str, Any] | None:
    metrics = _read_json(path)
    if metrics is None:
        return None
    keep = ("top1", "top3", "top5", "knn_top1", "knn_top5", "per_class", "protocol", "checkpoint")
    return {k: metrics[k] for k in keep if k in metrics}


def _relative(path: Path, run_dir: Path) -> str:
    try:
        return str(path.resolve().relative_to(run_dir.resolve()))
    except ValueError:
        return str(path.resolve())


def main(argv: list[str] | None = None) -> int:
    parser = OneLineErrorParser(prog="python -m trainer.export", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, metavar="RUN_DIR", help="pretraining run directory")
    parser.add_argument("--out", required=True, metavar="BUNDLE_DIR", help="bundle directory to write")
    parser.add_argument("--checkpoint", metavar="FILE",
                        help="checkpoint to export (default: the one RUN_DIR/eval evaluated, else the latest)")
    args = parser.parse_args(argv)
    try:
        manifest = export(args.run, args.out, args.checkpoint)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    head = "with" if manifest["metrics"] is not None else "without (the run was not evaluated)"
    print(f"bundle {args.out}: {manifest['architecture']['backbone']}, epoch "
          f"{manifest['training']['checkpoint_epoch']}, {len(manifest['classes'])} classes, {head} a classifier")
    return 0


if __name__ == "__main__":
    sys.exit(main())
