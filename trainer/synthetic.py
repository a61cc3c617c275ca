"""Synthetic images unlike any photograph, for measuring how often the distance from the training images
(contract.familiarity) flags them:
reproducible from a seed, no download. They are the easy end of "unlike the training data"; photographs of
other things (docs/evaluation.md, benchmarks/familiarity.py) are the hard one."""

from __future__ import annotations

import numpy as np


def synthetic_sets(n: int, size: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Per kind, n uint8 RGB images (n, 3, size, size):

    - uniform noise: every pixel and channel independent, uniform over 0-255;
    - smooth noise: uniform noise upsampled from a 4 x 4 grid (soft colour blobs);
    - flat colour: one random colour with a little noise;
    - stripes and checks: two random colours in stripes (any angle) or a checkerboard, random period.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    sets = {"uniform noise": rng.integers(0, 256, (n, size, size, 3)),
            "smooth noise": np.stack([_upsample(rng.integers(0, 256, (4, 4, 3)), size) for _ in range(n)]),
            "flat colour": rng.integers(0, 256, (n, 1, 1, 3)) + rng.normal(0, 4, (n, size, size, 3))}
    patterns = []
    for _ in range(n):
        period, angle, phase = rng.uniform(0.1, 0.5), rng.uniform(0, np.pi), rng.uniform(0, 2 * np.pi)
        along = xx * np.cos(angle) + yy * np.sin(angle)
        mask = np.sin(2 * np.pi * along / period + phase) > 0
        if rng.random() < 0.5:  # a checkerboard instead
            mask ^= np.sin(2 * np.pi * (-xx * np.sin(angle) + yy * np.cos(angle)) / period) > 0
        colours = rng.integers(0, 256, (2, 3))
        patterns.append(np.where(mask[..., None], colours[0], colours[1]))
    sets["stripes and checks"] = np.stack(patterns)
    return {name: np.clip(images, 0, 255).astype(np.uint8).transpose(0, 3, 1, 2) for name, images in sets.items()}


def _upsample(grid: np.ndarray, size: int) -> np.ndarray:
    """Bilinear upsampling of a small (h, w, 3) grid to (size, size, 3)."""
    h, w, _ = grid.shape
    ys, xs = np.linspace(0, h - 1, size), np.linspace(0, w - 1, size)
    y0, x0 = np.floor(ys).astype(int), np.floor(xs).astype(int)
    y1, x1 = np.minimum(y0 + 1, h - 1), np.minimum(x0 + 1, w - 1)
    fy, fx = (ys - y0)[:, None, None], (xs - x0)[None, :, None]
    top = grid[y0][:, x0] * (1 - fx) + grid[y0][:, x1] * fx
    bottom = grid[y1][:, x0] * (1 - fx) + grid[y1][:, x1] * fx
    return top * (1 - fy) + bottom * fy
