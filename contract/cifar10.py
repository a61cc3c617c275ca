"""CIFAR-10 in torchvision's layout (ROOT/cifar-10-batches-py), downloaded into an empty or missing folder:
the trainer's default data set and the service's default index."""

from __future__ import annotations

from pathlib import Path

import numpy as np


class DataError(Exception):
    """A data set that cannot be read or downloaded."""


def is_cifar10_root(root: Path) -> bool:
    """Whether root holds (or, being empty or missing, may receive) CIFAR-10 in torchvision's layout."""
    return (root / "cifar-10-batches-py").is_dir() or not root.exists() or (root.is_dir() and not any(root.iterdir()))


def load_cifar10(root: Path, split: str, download: bool = True) -> tuple[np.ndarray, list[int], list[str]]:
    """uint8 images (N, 32, 32, 3), labels and class names of the "train" or "test" split."""
    from torchvision.datasets import CIFAR10

    try:
        # torchvision unpickles the batches, but only after checking each file's MD5 against the published one.
        ds = CIFAR10(str(root), train=split == "train", download=download)
    except Exception as e:  # torchvision raises RuntimeError, URLError, OSError ... depending on the failure
        how = "could not be downloaded" if download else "is not there (and downloading is off)"
        raise DataError(f"CIFAR-10 {how} in {root} ({type(e).__name__}: {e}); use an image folder laid out as "
                        f"train/<class>/*.jpg [test/<class>/*.jpg] instead") from None
    return ds.data, list(ds.targets), list(ds.classes)
