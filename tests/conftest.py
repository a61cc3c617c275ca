"""Synthetic image sets written as the image-folder layout the trainer reads."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

PATTERNS = ("horizontal", "vertical", "checker", "diagonal")


def pattern_images(n_per_class: int, size: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Grey two-tone patterns, one class per pattern (stripes each way, checkerboard, diagonal lattice),
    with random period, phase and noise per image: classes that crops and flips keep, nuisances they change.
    Returns uint8 images (N, size, size, 3) and labels (N,)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    images, labels = [], []
    for label in range(len(PATTERNS)):
        for _ in range(n_per_class):
            period, (p1, p2) = rng.uniform(2.5, 8), rng.uniform(0, 2 * np.pi, 2)
            rows, cols = np.sin(2 * np.pi * yy / period + p1) > 0, np.sin(2 * np.pi * xx / period + p2) > 0
            d1 = np.sin(2 * np.pi * (xx + yy) / (period * 1.41) + p1) > 0
            d2 = np.sin(2 * np.pi * (xx - yy) / (period * 1.41) + p2) > 0
            mask = (rows, cols, rows ^ cols, d1 ^ d2)[label]
            image = np.where(mask[..., None], 220, 40) + rng.normal(0, 25, (size, size, 3))
            images.append(np.clip(image, 0, 255).astype(np.uint8))
            labels.append(label)
    return np.stack(images), np.array(labels)


def write_image_folder(root: Path, split: str, images: np.ndarray, labels: np.ndarray,
                       classes: tuple[str, ...] = PATTERNS) -> Path:
    for i, (image, label) in enumerate(zip(images, labels)):
        folder = root / split / classes[label]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"{i:05d}.png")
    return root


@pytest.fixture
def pattern_folder(tmp_path: Path) -> Path:
    """train/ with 16 images per class and test/ with 8, 16x16 pixels."""
    root = tmp_path / "patterns"
    write_image_folder(root, "train", *pattern_images(16, seed=0))
    write_image_folder(root, "test", *pattern_images(8, seed=1))
    return root
