"""Runs, bundles and images small enough for CPU tests: a SimCLR built directly (no training), saved as the
trainer saves it, with a linear-evaluation head written in trainer.linear_eval's format."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file

from contract.evaluation import EvaluationHead, EvaluationMetrics
from contract.networks import classifier_head
from trainer.config import make_config
from trainer.models import SimCLR
from trainer.report import classification_metrics
from trainer.run_dir import RunDir

CLASSES = ("blue", "green", "grey", "red")  # sorted, as class folders are listed
SIZE = 16
MACHINE = "2 cores of a test machine, torch x"
DATA_NAME = "Colour squares (PNG)"
TEMPERATURE = 1.5


def make_run(root: Path, *, backbone: str = "resnet18", width: int = 1, evaluated: bool = True,
             hidden_dims: tuple[int, ...] = (), seed: int = 0) -> tuple[Path, SimCLR]:
    """A run directory as trainer.pretrain leaves it (config.json, metrics.jsonl, starts.jsonl, one checkpoint)
    holding a random SimCLR whose BatchNorm statistics are not the defaults, and, when evaluated, an eval/ as
    trainer.linear_eval writes it."""
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
    (root / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "loss": 5.0, "epoch_seconds": 180.0}) + "\n")
    (root / "starts.jsonl").write_text(json.dumps({"epoch": 0, "machine": MACHINE, "commit": "abc123"}) + "\n")
    RunDir(root).save_checkpoint(1, {"model": model.state_dict(), "epoch": 1, "config": config.to_dict(),
                                     "classes": list(CLASSES)}, keep=2)
    if evaluated:
        write_eval(root, model.feature_dim, list(hidden_dims))
    return root, model.eval()


def write_eval(run_dir: Path, input_dim: int, hidden_dims: list[int], classes=CLASSES,
               checkpoint_name: str = "checkpoints/epoch_0001.pt") -> None:
    """RUN_DIR/eval as trainer.linear_eval writes it: classifier.safetensors, classifier.json (temperature
    TEMPERATURE), familiarity.safetensors (random unit class means, precision 4 I: distances reach 4 only opposite
    a mean, so the threshold 3.5 takes in almost any image) and metrics.json."""
    out = run_dir / "eval"
    out.mkdir(parents=True, exist_ok=True)
    head = classifier_head(input_dim, len(classes), hidden_dims)
    for p in head.parameters():
        torch.nn.init.normal_(p, std=0.1)
    save_file(head.state_dict(), out / "classifier.safetensors")
    EvaluationHead(input_dim=input_dim, hidden_dims=hidden_dims, classes=list(classes), checkpoint=checkpoint_name,
                   temperature=TEMPERATURE).write(out / "classifier.json")
    means = torch.nn.functional.normalize(torch.randn(len(classes), input_dim), dim=1)
    save_file({"means": means, "precision": torch.eye(input_dim) * 4}, out / "familiarity.safetensors")
    labels = torch.arange(20) % len(classes)
    metrics = classification_metrics(torch.randn(20, len(classes)), labels, list(classes))
    protocol = {"name": "linear", "encoder": "frozen", "data_dir": "colours", "data_name": DATA_NAME,
                "train_images": 40, "val_images": 0, "test_images": 20, "label_fraction": 1.0, "epochs": 1,
                "stopping_epoch": 1, "lr": 0.1, "weight_decay": 0.0, "seed": 0}
    calibration = {"images": 8, "temperature": TEMPERATURE, "test_ece_before": 0.2, "test_ece_after": 0.05}
    familiarity = {"images": 40, "threshold": 3.5, "heldout_images": 8, "heldout_accepted": 0.875,
                   "test_accepted": 0.85, "rejected": {"uniform noise": 0.9}}
    history = [{"epoch": 1, "loss": 1.3, "lr_first": 0.1, "lr_last": 0.0}]
    EvaluationMetrics(**metrics, knn_top1=0.4, knn_top5=1.0, knn_k=10, knn_temperature=0.1, protocol=protocol,
                      checkpoint=checkpoint_name, calibration=calibration, familiarity=familiarity,
                      history=history).write(out / "metrics.json")


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


def wait_ready(client, timeout: float = 60) -> dict:
    """Poll /readyz until the service is ready or has given up loading; returns the last answer."""
    deadline = time.monotonic() + timeout
    while True:
        readiness = client.get("/readyz").json()
        if readiness["ready"] or readiness["error"]:
            return readiness
        assert time.monotonic() < deadline, readiness
        time.sleep(0.02)
