"""SimCLR's CIFAR-10 views as batched tensor functions on the training device.

Each function takes a float batch (N, 3, H, W) in [0, 1] and a torch.Generator, and
draws its random parameters per image, so no per-image Python runs in the hot path.
The parameter ranges follow torchvision's RandomResizedCrop, ColorJitter and
RandomGrayscale, which the public SimCLR implementations compose per image.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from contract.preprocess import normalize, to_float

_LUMA = (0.299, 0.587, 0.114)  # ITU-R 601, as torchvision's rgb_to_grayscale


def _uniform(lo: float, hi: float, n: int, g: torch.Generator, device: torch.device) -> Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=g, device=device)


def _bernoulli(p: float, n: int, g: torch.Generator, device: torch.device) -> Tensor:
    return torch.rand(n, generator=g, device=device) < p


def crop_boxes(n: int, height: int, width: int, g: torch.Generator, device: torch.device,
               scale: tuple[float, float] = (0.08, 1.0), ratio: tuple[float, float] = (3 / 4, 4 / 3),
               tries: int = 10) -> Tensor:
    """RandomResizedCrop's boxes (top, left, h, w) in pixels, (n, 4): the first of `tries` samples of
    area fraction and log-uniform aspect ratio that fits, else the whole image."""
    area = height * width * _uniform(*scale, n * tries, g, device).view(n, tries)
    log_ratio = _uniform(math.log(ratio[0]), math.log(ratio[1]), n * tries, g, device).view(n, tries)
    w = torch.sqrt(area * log_ratio.exp()).round()
    h = torch.sqrt(area / log_ratio.exp()).round()
    fits = (w >= 1) & (w <= width) & (h >= 1) & (h <= height)
    first = fits.int().argmax(dim=1, keepdim=True)  # argmax returns the first True
    found = fits.any(dim=1)
    w = torch.where(found, w.gather(1, first).squeeze(1), torch.full_like(found, width, dtype=w.dtype))
    h = torch.where(found, h.gather(1, first).squeeze(1), torch.full_like(found, height, dtype=h.dtype))
    top = torch.floor(torch.rand(n, generator=g, device=device) * (height - h + 1))
    left = torch.floor(torch.rand(n, generator=g, device=device) * (width - w + 1))
    return torch.stack([top, left, h, w], dim=1)


def resized_crop_flip(x: Tensor, boxes: Tensor, flip: Tensor, size: int) -> Tensor:
    """Crop each image to its box, mirror it where `flip`, and resize to size x size (bilinear),
    in one grid_sample: the crop, the flip and the resize are one affine map per image."""
    n, _, height, width = x.shape
    top, left, h, w = boxes.unbind(1)
    theta = torch.zeros(n, 2, 3, device=x.device, dtype=x.dtype)
    theta[:, 0, 0] = (w / width) * (1 - 2 * flip.to(x.dtype))
    theta[:, 0, 2] = (2 * left + w) / width - 1
    theta[:, 1, 1] = h / height
    theta[:, 1, 2] = (2 * top + h) / height - 1
    grid = F.affine_grid(theta, [n, 3, size, size], align_corners=False)
    # Upsampling maps the outer output pixels up to half a pixel outside the box; crop-then-resize (torchvision)
    # samples no further than the box's edge pixel centres, so clamp there: nothing outside the box leaks in.
    lo_x, hi_x = (2 * left + 1) / width - 1, (2 * (left + w) - 1) / width - 1
    lo_y, hi_y = (2 * top + 1) / height - 1, (2 * (top + h) - 1) / height - 1
    grid = torch.stack([grid[..., 0].clamp(lo_x.view(-1, 1, 1), hi_x.view(-1, 1, 1)),
                        grid[..., 1].clamp(lo_y.view(-1, 1, 1), hi_y.view(-1, 1, 1))], dim=-1)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def grayscale(x: Tensor) -> Tensor:
    """(N, 3, H, W) -> (N, 1, H, W) luma."""
    weights = torch.tensor(_LUMA, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x * weights).sum(dim=1, keepdim=True)


def adjust_brightness(x: Tensor, factor: Tensor) -> Tensor:
    return (x * factor.view(-1, 1, 1, 1)).clamp(0, 1)


def adjust_contrast(x: Tensor, factor: Tensor) -> Tensor:
    mean = grayscale(x).mean(dim=(1, 2, 3), keepdim=True)
    f = factor.view(-1, 1, 1, 1)
    return (f * x + (1 - f) * mean).clamp(0, 1)


def adjust_saturation(x: Tensor, factor: Tensor) -> Tensor:
    f = factor.view(-1, 1, 1, 1)
    return (f * x + (1 - f) * grayscale(x)).clamp(0, 1)


def rgb_to_hsv(x: Tensor) -> Tensor:
    r, g, b = x.unbind(1)
    maxc, _ = x.max(dim=1)
    minc, _ = x.min(dim=1)
    delta = maxc - minc
    safe = torch.where(delta > 0, delta, torch.ones_like(delta))
    rc, gc, bc = (maxc - r) / safe, (maxc - g) / safe, (maxc - b) / safe
    hue = torch.where(maxc == r, bc - gc, torch.where(maxc == g, 2 + rc - bc, 4 + gc - rc))
    hue = torch.where(delta > 0, (hue / 6) % 1.0, torch.zeros_like(hue))
    sat = torch.where(maxc > 0, delta / torch.where(maxc > 0, maxc, torch.ones_like(maxc)), torch.zeros_like(maxc))
    return torch.stack([hue, sat, maxc], dim=1)


def hsv_to_rgb(x: Tensor) -> Tensor:
    h, s, v = x.unbind(1)
    sector = torch.floor(h * 6)
    f = h * 6 - sector
    sector = sector.long() % 6
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    # For each of the six hue sectors, which of (v, q, p, t) feeds r, g and b.
    table = torch.tensor([[0, 3, 2], [1, 0, 2], [2, 0, 3], [2, 1, 0], [3, 2, 0], [0, 2, 1]], device=x.device)
    candidates = torch.stack([v, q, p, t], dim=1)  # (N, 4, H, W)
    pick = table[sector].permute(0, 3, 1, 2)  # (N, 3, H, W)
    return candidates.gather(1, pick)


def adjust_hue(x: Tensor, shift: Tensor) -> Tensor:
    hsv = rgb_to_hsv(x)
    hsv[:, 0] = (hsv[:, 0] + shift.view(-1, 1, 1)) % 1.0
    return hsv_to_rgb(hsv)


_JITTER_OPS = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)


def color_jitter(x: Tensor, g: torch.Generator, strength: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1),
                 p: float = 0.8) -> Tensor:
    """ColorJitter(brightness, contrast, saturation, hue) applied with probability p, each image with its
    own factors and its own random order of the four adjustments."""
    n, device = x.shape[0], x.device
    b, c, s, h = strength
    factors = torch.stack([_uniform(1 - b, 1 + b, n, g, device), _uniform(1 - c, 1 + c, n, g, device),
                           _uniform(1 - s, 1 + s, n, g, device), _uniform(-h, h, n, g, device)])
    order = torch.rand(n, 4, generator=g, device=device).argsort(dim=1)  # a random permutation per image
    applied = _bernoulli(p, n, g, device)
    # Each adjustment runs on the whole batch and is kept where it is this image's turn: selecting the images
    # first (nonzero) would make the host wait for the device at every step, and these elementwise passes cost
    # little beside the network's step.
    out = x
    for position in range(4):
        for op_index, op in enumerate(_JITTER_OPS):
            turn = ((order[:, position] == op_index) & applied).view(-1, 1, 1, 1)
            out = torch.where(turn, op(out, factors[op_index]), out)
    return out


def random_grayscale(x: Tensor, g: torch.Generator, p: float = 0.2) -> Tensor:
    gray = _bernoulli(p, x.shape[0], g, x.device).view(-1, 1, 1, 1)
    return torch.where(gray, grayscale(x).expand_as(x), x)


def gaussian_blur(x: Tensor, g: torch.Generator, p: float = 0.5, sigma: tuple[float, float] = (0.1, 2.0)) -> Tensor:
    """SimCLR's blur: kernel 10% of the image side (odd), sigma uniform per image, applied with p."""
    n, ch, height, width = x.shape
    k = max(3, int(0.1 * height) // 2 * 2 + 1)
    sig = _uniform(*sigma, n, g, x.device)
    sig = torch.where(_bernoulli(p, n, g, x.device), sig, torch.full_like(sig, 1e-3))  # ~identity kernel
    offsets = torch.arange(k, device=x.device, dtype=x.dtype) - k // 2
    kernel = torch.exp(-(offsets.view(1, -1) ** 2) / (2 * sig.view(-1, 1) ** 2))
    kernel = (kernel / kernel.sum(dim=1, keepdim=True)).repeat_interleave(ch, dim=0)  # (n*ch, k)
    y = F.pad(x.reshape(1, n * ch, height, width), (k // 2,) * 4, mode="reflect")
    y = F.conv2d(y, kernel.view(n * ch, 1, 1, k), groups=n * ch)
    y = F.conv2d(y, kernel.view(n * ch, 1, k, 1), groups=n * ch)
    return y.view(n, ch, height, width)


def random_crop_flip(images: Tensor, g: torch.Generator, size: int,
                     scale: tuple[float, float] = (0.08, 1.0)) -> Tensor:
    """RandomResizedCrop(size, scale) and a horizontal flip with p 0.5 of a uint8 batch, in [0, 1]."""
    x = to_float(images)
    n, _, height, width = x.shape
    boxes = crop_boxes(n, height, width, g, x.device, scale=scale)
    return resized_crop_flip(x, boxes, _bernoulli(0.5, n, g, x.device), size)


def simclr_view(images: Tensor, g: torch.Generator, size: int, blur: bool = False, min_scale: float = 0.08,
                grayscale_p: float = 0.2) -> Tensor:
    """One augmented view of a uint8 batch, in [0, 1] (not yet normalised)."""
    x = random_grayscale(color_jitter(random_crop_flip(images, g, size, (min_scale, 1.0)), g), g, grayscale_p)
    return gaussian_blur(x, g) if blur else x


def two_views(images: Tensor, g: torch.Generator, size: int, blur: bool = False, min_scale: float = 0.08,
              grayscale_p: float = 0.2) -> tuple[Tensor, Tensor]:
    """The positive pair of SimCLR, normalised for the network: two independent views of each image."""
    return (normalize(simclr_view(images, g, size, blur, min_scale, grayscale_p)),
            normalize(simclr_view(images, g, size, blur, min_scale, grayscale_p)))
