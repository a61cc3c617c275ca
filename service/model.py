"""Preprocessing and inference: image bytes -> the evaluation's input tensor -> representation, projection,
class probabilities.

Preprocessing is the one the linear evaluation used (trainer.data), read from the bundle's manifest:
decode (first frame of an animation), convert to RGB (alpha dropped, palette and greyscale expanded; 16-bit
greyscale scaled to 8 bits first), resize the shorter side to the input size and centre-crop (PIL
ImageOps.fit, bicubic; images already at the input size are untouched), then /255 and normalise with the
manifest's mean and std.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import Tensor

from service.bundle import Bundle

# Formats Pillow decodes natively; the rest (EPS via Ghostscript, PSD, ...) are refused rather than trusted.
FORMATS = ("JPEG", "PNG", "GIF", "BMP", "WEBP", "TIFF", "PPM")


class ImageError(Exception):
    """An upload that is not a usable image; status is the HTTP status that says why (413, 415 or 422)."""

    def __init__(self, message: str, status: int = 422):
        super().__init__(message)
        self.status = status


def decode_image(data: bytes, size: int, max_pixels: int) -> np.ndarray:
    """RGB uint8 (size, size, 3) from encoded image bytes, as the evaluation decoded its images."""
    if not data:
        raise ImageError("the file is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=FORMATS) as img:
                width, height = img.size  # from the header: nothing is decompressed yet
                if width * height > max_pixels:
                    raise ImageError(f"the image is {width}x{height} = {width * height} pixels, over the limit of "
                                     f"{max_pixels}", status=413)
                img.load()
                img = _to_rgb(img)
    except UnidentifiedImageError:
        raise ImageError(f"not an image in a supported format ({', '.join(FORMATS)})", status=415) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageError(f"refused as a decompression bomb: {e}", status=413) from None
    except (OSError, ValueError, SyntaxError, EOFError) as e:  # truncated or corrupt data, bad headers
        raise ImageError(f"the image data is corrupt or truncated ({e})") from None
    if img.size != (size, size):
        img = ImageOps.fit(img, (size, size), Image.Resampling.BICUBIC)
    return np.array(img, dtype=np.uint8)  # a writable copy: torch.from_numpy warns on read-only arrays


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):  # 16-bit greyscale: keep the top 8 bits
        # convert("RGB") would clip at 255 and turn almost every 16-bit image white.
        return Image.fromarray((np.asarray(img).astype(np.uint32) >> 8).clip(0, 255).astype(np.uint8)).convert("RGB")
    return img.convert("RGB")


@dataclass
class Outputs:
    """Per image: raw representation (N, D), the same L2-normalised, projection (N, P), class probabilities
    (N, C) or None."""

    representation: Tensor
    unit: Tensor
    projection: Tensor
    probabilities: Tensor | None

    def __getitem__(self, rows: slice) -> Outputs:
        """The outputs of some of the images: how the batcher hands each request its own rows."""
        probabilities = self.probabilities[rows] if self.probabilities is not None else None
        return Outputs(self.representation[rows], self.unit[rows], self.projection[rows], probabilities)


class Model:
    """A loaded bundle's networks with its preprocessing; infer() is what the batcher runs."""

    def __init__(self, bundle: Bundle):
        self.bundle = bundle
        spec = bundle.manifest.input
        self.size = spec.size
        self.mean = torch.tensor(spec.mean).view(1, 3, 1, 1)
        self.std = torch.tensor(spec.std).view(1, 3, 1, 1)

    def preprocess(self, data: bytes, max_pixels: int) -> np.ndarray:
        """uint8 (S, S, 3) from encoded image bytes; raises ImageError."""
        return decode_image(data, self.size, max_pixels)

    @staticmethod
    def batch(images: list[np.ndarray]) -> Tensor:
        """uint8 (N, 3, S, S), a view of the images stacked by numpy: no torch kernel runs here (see infer)."""
        return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2)

    @torch.inference_mode()
    def infer(self, images: Tensor) -> Outputs:
        """Outputs of uint8 images (N, 3, S, S), any strides. The heads cost almost nothing next to the encoder,
        so every output is computed and each route takes what it needs. All of it runs in the service's one
        inference thread: see service.state for why no other thread runs torch's parallel kernels."""
        x = (images.contiguous().float() / 255 - self.mean) / self.std
        h = self.bundle.encoder(x)
        z = self.bundle.projector(h)
        head = self.bundle.classifier
        return Outputs(h, F.normalize(h, dim=1), z, F.softmax(head(h), dim=1) if head is not None else None)
