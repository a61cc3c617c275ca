"""Runs, bundles and images small enough for CPU tests: a SimCLR built directly (no training), saved as the
trainer saves it, with a linear-evaluation head written in trainer.linear_eval's format."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file

from trainer import checkpoint
from trainer.config import make_config
from trainer.models import SimCLR

CLASSES = ("blue", "green", "grey", "red")  # sorted, as class folders are listed
SIZE = 16


def make_run(root: Path, *, backbone: str = "resnet18", width: int = 1, evaluated: bool = True,
             hidden_dims: tuple[int, ...] = (), seed: int = 0) -> tuple[Path, SimCLR]:
    """A run directory as trainer.pretrain leaves it (config.json, one checkpoint) holding a random SimCLR
    whose BatchNorm statistics are not the defaults, and, when evaluated, an eval/ as trainer.linear_eval
    writes it."""
    torch.manual_seed(seed)
    config = make_config({"backbone": backbone, "width": width, "image_size": SIZE, "proj_hidden_dim": 64,
                          "proj_dim": 32, "epochs": 1, "batch_size": 16, "out": str(root)})
    model = SimCLR(backbone, width, 64, 32)
    model.train()
    with torch.no_grad():  # a few training-mode passes move the BatchNorm running statistics
        for _ in range(3):
            model(torch.randn(8, 3, SIZE, SIZE))
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.json").write_text(json.dumps(config.to_dict()))
    checkpoint.save(root, 1, {"model": model.state_dict(), "epoch": 1, "config": config.to_dict(),
                              "classes": list(CLASSES)}, keep=2)
    if evaluated:
        write_eval(root, model.feature_dim, list(hidden_dims))
    return root, model.eval()


def write_eval(run_dir: Path, input_dim: int, hidden_dims: list[int], classes=CLASSES,
               checkpoint_name: str = "checkpoints/epoch_0001.pt") -> None:
    """RUN_DIR/eval as trainer.linear_eval writes it: classifier.safetensors, classifier.json, metrics.json."""
    out = run_dir / "eval"
    out.mkdir(parents=True, exist_ok=True)
    dims = [input_dim, *hidden_dims, len(classes)]
    weights = {}
    for i, (d_in, d_out) in enumerate(zip(dims, dims[1:])):
        weights[f"{3 * i}.weight"] = torch.randn(d_out, d_in) * 0.1
        weights[f"{3 * i}.bias"] = torch.randn(d_out) * 0.1
    save_file(weights, out / "classifier.safetensors")
    (out / "classifier.json").write_text(json.dumps({"input_dim": input_dim, "hidden_dims": hidden_dims,
                                                     "classes": list(classes), "checkpoint": checkpoint_name}))
    (out / "metrics.json").write_text(json.dumps({
        "top1": 0.5, "top3": 0.9, "top5": 1.0, "knn_top1": 0.4, "knn_top5": 1.0,
        "per_class": {c: 0.5 for c in classes}, "protocol": {"name": "linear"}, "checkpoint": checkpoint_name}))


def colour_images(n_per_class: int, size: int = SIZE, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """uint8 (N, size, size, 3) noisy images whose dominant colour is their class (CLASSES), labels (N,)."""
    rng = np.random.default_rng(seed)
    base = np.array([[40, 40, 200], [40, 200, 40], [128, 128, 128], [200, 40, 40]])
    images = [np.clip(base[c] + rng.normal(0, 40, (size, size, 3)), 0, 255).astype(np.uint8)
              for c in range(len(CLASSES)) for _ in range(n_per_class)]
    return np.stack(images), np.repeat(np.arange(len(CLASSES)), n_per_class)


def write_folder(root: Path, split: str, images: np.ndarray, labels: np.ndarray) -> Path:
    for i, (image, label) in enumerate(zip(images, labels)):
        folder = root / split / CLASSES[label]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"{i:04d}.png")
    return root


def png_bytes(image: np.ndarray | Image.Image, format: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    (image if isinstance(image, Image.Image) else Image.fromarray(image)).save(buffer, format=format)
    return buffer.getvalue()


def wait_ready(client, timeout: float = 60) -> dict:
    """Poll /readyz until the service is ready or has given up loading; returns the last answer."""
    deadline = time.monotonic() + timeout
    while True:
        readiness = client.get("/readyz").json()
        if readiness["ready"] or readiness["error"]:
            return readiness
        assert time.monotonic() < deadline, readiness
        time.sleep(0.02)
