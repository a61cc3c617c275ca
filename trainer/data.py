"""Image data as uint8 tensors, decoded once, cached on disk, and served from the training device.

Three sources, told apart by the folder's contents:
- an image folder `train/<class>/*` with optional `test/<class>/*` (like the offline CIFAR-10 copy);
- torchvision's CIFAR-10 layout (`cifar-10-batches-py/`), downloaded into an empty or missing folder;
- any other folder of images, unlabelled (label -1), for pretraining without labels.
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from contract.cifar10 import DataError, load_cifar10
from contract.files import atomic_write
from contract.images import EXTENSIONS, ImageError, data_layout, decode_all, decode_image, fit, list_images
from trainer.errors import UserError

_CACHE_VERSION = 2  # 2: images decoded by contract.images (16-bit greyscale scaled, not clipped)


@dataclass
class ImageSet:
    """images: uint8 (N, 3, S, S); labels: int64 (N,), -1 where unlabelled; classes: label -> name."""

    images: Tensor
    labels: Tensor
    classes: list[str]

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def labelled(self) -> bool:
        return bool(self.classes) and bool((self.labels >= 0).all())

    def subset(self, indices: Tensor) -> ImageSet:
        return ImageSet(self.images[indices], self.labels[indices], self.classes)

    def to(self, device: torch.device | str) -> ImageSet:
        return ImageSet(self.images.to(device), self.labels.to(device), self.classes)


def load_split(root: str | Path, split: str, image_size: int = 32, download: bool = True,
               cache_dir: str | Path | None = None) -> ImageSet | None:
    """The `split` ("train" or "test") of the data set at `root`; None when it has no such split."""
    root = Path(root).expanduser()
    layout = data_layout(root)
    if layout == "labelled":
        folder = root / split
        if not folder.is_dir():
            return None
        classes = None if split == "train" else _folder_classes(root / "train")
        return _cached(folder, image_size, cache_dir, lambda files: _decode_labelled(folder, files, classes))
    if layout == "cifar10":
        return _torchvision_cifar10(root, split, image_size, download)
    if split != "train":
        return None
    return _cached(root, image_size, cache_dir, lambda files: _decode_unlabelled(root, files))


def balanced_subset(data: ImageSet, n: int, seed: int = 0) -> ImageSet:
    """n images with the classes as equally represented as n allows, chosen reproducibly by seed."""
    if n > len(data):
        raise UserError(f"asked for a subset of {n} images but the data set has only {len(data)}")
    if not data.labelled:
        return data.subset(torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))[:n].sort().values)
    return data.subset(balanced_indices(data.labels, n, seed))


def balanced_indices(labels: Tensor, n: int, seed: int = 0) -> Tensor:
    """Sorted indices of n labels, the classes as equally represented as n allows, chosen reproducibly by seed."""
    g = torch.Generator().manual_seed(seed)
    per_class = [torch.nonzero(labels == c).squeeze(1) for c in labels.unique().tolist()]
    per_class = [idx[torch.randperm(len(idx), generator=g)] for idx in per_class]
    # Round-robin over classes: class counts differ by at most one (unless a class runs out).
    order = torch.cat([torch.stack([idx[i] for idx in per_class if i < len(idx)])
                       for i in range(max(len(idx) for idx in per_class))])
    return order[:n].sort().values


def _folder_classes(train_dir: Path) -> list[str]:
    classes = sorted(d.name for d in train_dir.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise UserError(f"{train_dir} has no class folders: expected {train_dir}/<class>/<image>")
    return classes


def _cached(root: Path, image_size: int, cache_dir: str | Path | None, decode) -> ImageSet:
    """Decode the images under root once; later runs read the arrays from cache_dir, keyed by the
    file list (names, sizes, modification times) and the resolution."""
    files = list_images(root)
    if not files:
        raise UserError(f"{root} holds no images ({', '.join(EXTENSIONS)})")
    key = hashlib.sha256(json.dumps([_CACHE_VERSION, str(root.resolve()), image_size] + [
        (str(f.relative_to(root)), f.stat().st_size, f.stat().st_mtime_ns) for f in files]).encode()).hexdigest()[:24]
    cache = Path(cache_dir).expanduser() / f"{key}.npz" if cache_dir else None
    if cache and cache.exists():
        try:
            with np.load(cache, allow_pickle=False) as z:
                return ImageSet(torch.from_numpy(z["images"]), torch.from_numpy(z["labels"]),
                                [str(c) for c in z["classes"]])
        except (OSError, ValueError, KeyError, zipfile.BadZipFile):  # damaged: decoded again and written anew
            pass
    images, labels, classes = decode(files)
    array = np.stack(decode_all(images, lambda f: _decode(f, image_size), desc=f"decoding {root}"))
    data = ImageSet(torch.from_numpy(array).permute(0, 3, 1, 2).contiguous(), torch.tensor(labels), classes)
    if cache:
        _write_cache(cache, data)
    return data


def _decode_labelled(folder: Path, files: list[Path], classes: list[str] | None):
    found = _folder_classes(folder)
    classes = classes or found
    unknown = sorted(set(found) - set(classes))
    if unknown:
        raise UserError(f"{folder} has classes the training split lacks: {', '.join(unknown)}")
    by_class = {c: [f for f in files if f.relative_to(folder).parts[0] == c] for c in found}
    empty = [c for c, fs in by_class.items() if not fs]
    if empty:
        raise UserError(f"class folder {folder / empty[0]} has no images")
    index = {c: i for i, c in enumerate(classes)}
    images = [f for c in found for f in by_class[c]]
    return images, [index[c] for c in found for _ in by_class[c]], classes


def _decode_unlabelled(root: Path, files: list[Path]):
    return files, [-1] * len(files), []


def _decode(path: Path, size: int) -> np.ndarray:
    try:
        return decode_image(path.read_bytes(), size)
    except (ImageError, OSError) as e:
        raise UserError(f"cannot read image {path}: {e}") from None


def _write_cache(path: Path, data: ImageSet) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, images=data.images.numpy(), labels=data.labels.numpy(), classes=np.array(data.classes))
    try:
        atomic_write(path, buffer.getvalue())
    except OSError as e:  # a read-only cache dir costs decode time, nothing else
        print(f"warning: could not cache decoded images in {path.parent}: {e}")


def _torchvision_cifar10(root: Path, split: str, image_size: int, download: bool) -> ImageSet:
    try:
        array, labels, classes = load_cifar10(root, split, download)
    except DataError as e:
        raise UserError(str(e)) from None
    if image_size != array.shape[1]:  # resized as every other image is (contract.images.RESIZE)
        array = np.stack([fit(image, image_size) for image in tqdm(array, desc="resizing", unit="img", mininterval=2)])
    images = torch.from_numpy(array).permute(0, 3, 1, 2).contiguous()
    return ImageSet(images, torch.tensor(labels), classes)


class DeviceLoader:
    """Batches of indices into a data set that lives on the training device, from a seeded permutation
    per epoch; under DDP every rank draws the same permutation and takes its own slice of each batch.
    The permutation is drawn on the CPU (the same on every device) and moved to the device once an epoch, so
    that indexing the images makes the host wait for nothing."""

    def __init__(self, n: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1,
                 device: torch.device | str = "cpu"):
        if batch_size > n:
            raise UserError(f"--batch-size {batch_size} is larger than the data set ({n} images)")
        if batch_size % world_size:
            raise UserError(f"--batch-size {batch_size} must divide evenly over {world_size} processes")
        self.n, self.batch_size, self.rank, self.world_size = n, batch_size, rank, world_size
        self.device = torch.device(device)
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return self.n // self.batch_size  # drop the last, smaller batch: NT-Xent wants full batches

    def __iter__(self):
        return self.batches()

    def batches(self, start: int = 0):
        """This epoch's batches from batch `start` on (a run resumed in the middle of an epoch)."""
        perm = torch.randperm(self.n, generator=self.generator).to(self.device, non_blocking=True)
        local = self.batch_size // self.world_size
        for step in range(start, len(self)):
            first = step * self.batch_size + self.rank * local
            yield perm[first:first + local]
