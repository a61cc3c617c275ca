"""Image files and bytes -> the model's input: the one decoding that training, evaluation, index building and
the service all use, so that an image means the same pixels everywhere.

decode (the first frame of an animation or the first page of a multi-page TIFF), convert to RGB (alpha dropped,
palette and greyscale expanded; 16-bit greyscale scaled to 8 bits first, floating-point greyscale in [0, 1]
scaled to 0-255), then, when the size differs, resize the shorter side and centre-crop
(PIL ImageOps.fit, bicubic). The bundle's manifest names this as RESIZE.
"""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Literal, TypeVar

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from tqdm import tqdm

from contract.cifar10 import is_cifar10_root

# Formats Pillow decodes natively; the rest (EPS via Ghostscript, PSD, ...) are refused rather than trusted.
FORMATS = ("JPEG", "PNG", "GIF", "BMP", "WEBP", "TIFF", "PPM")
EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm")
RESIZE = "fit-bicubic"


class ImageError(Exception):
    """Bytes that are not a usable image; status is the HTTP status that says why (413, 415 or 422)."""

    def __init__(self, message: str, status: int = 422):
        super().__init__(message)
        self.status = status


T, R = TypeVar("T"), TypeVar("R")


def data_layout(root: Path) -> Literal["labelled", "cifar10", "folder"]:
    """What a data folder is, decided the same way by the trainer and the index builder: "labelled" (train/
    [test/] of class folders) first, as the more specific layout; then "cifar10" (torchvision's, or an empty or
    missing folder to download it into); any other folder is "folder", its images unlabelled."""
    if (root / "train").is_dir():
        return "labelled"
    return "cifar10" if is_cifar10_root(root) else "folder"


def decode_all(items: Sequence[T], decode: Callable[[T], R], desc: str, bar: bool = True,
               threads: int = os.cpu_count() or 1) -> list[R]:
    """decode over items in threads, in order, with a progress bar: Pillow releases the GIL while it decodes
    and resizes, so files decode in parallel. The first exception decode raises is raised here."""
    with ThreadPoolExecutor(threads) as pool:
        return list(tqdm(pool.map(decode, items, chunksize=256), total=len(items), desc=desc, unit="img",
                         mininterval=1, disable=not bar))


def list_images(root: Path) -> list[Path]:
    """The image files under root (by extension, any depth), sorted, hidden files and folders skipped."""
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in EXTENSIONS and p.is_file()
                  and not any(part.startswith(".") for part in p.relative_to(root).parts))


def decode_image(data: bytes, size: int, max_pixels: int | None = None) -> np.ndarray:
    """RGB uint8 (size, size, 3) from encoded image bytes. max_pixels bounds width x height, read from the
    header before anything is decompressed (None: Pillow's own decompression-bomb limit only)."""
    return fit(open_image(data, max_pixels), size)


def open_image(data: bytes, max_pixels: int | None = None) -> Image.Image:
    """The decoded RGB image at its own size (decode_image without the resize), for a caller that also wants
    another size of it (the index's thumbnails)."""
    if not data:
        raise ImageError("the file is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=FORMATS) as img:
                width, height = img.size
                if max_pixels is not None and width * height > max_pixels:
                    raise ImageError(f"the image is {width}x{height} = {width * height} pixels, over the limit of "
                                     f"{max_pixels}", status=413)
                img.load()
                return _to_rgb(img)
    except UnidentifiedImageError:
        raise ImageError(f"not an image in a supported format ({', '.join(FORMATS)})", status=415) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageError(f"refused as a decompression bomb: {e}", status=413) from None
    except (OSError, ValueError, SyntaxError, EOFError) as e:  # truncated or corrupt data, bad headers
        raise ImageError(f"the image data is corrupt or truncated ({e})") from None


def fit(img: Image.Image | np.ndarray, size: int) -> np.ndarray:
    """RGB uint8 (size, size, 3): the shorter side resized to size and the centre cropped (RESIZE); an image
    already at that size is untouched."""
    if isinstance(img, np.ndarray):
        img = Image.fromarray(img)
    if img.size != (size, size):
        img = ImageOps.fit(img, (size, size), Image.Resampling.BICUBIC)
    return np.array(img, dtype=np.uint8)  # a writable copy: torch.from_numpy warns on read-only arrays


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):  # 16-bit greyscale: keep the top 8 bits
        # convert("RGB") would clip at 255 and turn almost every 16-bit image white.
        return Image.fromarray((np.asarray(img).astype(np.uint32) >> 8).clip(0, 255).astype(np.uint8)).convert("RGB")
    if img.mode == "F":  # floating-point greyscale (TIFF): [0, 1] as a fraction of white, else as 8-bit levels
        values = np.nan_to_num(np.asarray(img, dtype=np.float64))
        scale = 255.0 if values.size and values.max() <= 1.0 else 1.0
        return Image.fromarray((values * scale).round().clip(0, 255).astype(np.uint8)).convert("RGB")
    return img.convert("RGB")
