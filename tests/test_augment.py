import pytest
import torch
from torchvision.transforms.v2 import functional as TF

from contract.preprocess import to_float
from trainer import augment


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_two_views_shape_dtype_and_difference():
    images = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8)
    v1, v2 = augment.two_views(images, gen(), 32)
    assert v1.shape == v2.shape == (16, 3, 32, 32)
    assert v1.dtype == v2.dtype == torch.float32
    assert not torch.allclose(v1, v2)
    assert all(not torch.allclose(a, b) for a, b in zip(v1, v2))  # every image gets two different views


def test_views_resize_to_the_training_resolution():
    images = torch.randint(0, 256, (4, 3, 48, 40), dtype=torch.uint8)
    assert augment.simclr_view(images, gen(), 24).shape == (4, 3, 24, 24)


def test_crop_area_and_aspect_ranges():
    boxes = augment.crop_boxes(20000, 32, 32, gen(), torch.device("cpu"))
    top, left, h, w = boxes.T
    area = h * w / (32 * 32)
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= 32).all() and (left + w <= 32).all()
    assert area.min() >= 0.06 and area.max() <= 1.0  # 0.08 less rounding to whole pixels
    assert area.min() < 0.1 and area.max() > 0.95  # the whole range is used
    assert (w / h).min() >= 3 / 4 * 0.8 and (w / h).max() <= 4 / 3 * 1.25
    assert len(set(map(tuple, boxes.tolist()))) > 1000  # per-image parameters


def test_flip_rate_and_flip_is_a_mirror():
    x = torch.arange(4.0).repeat(4, 1).view(1, 1, 4, 4).repeat(1000, 3, 1, 1) / 3
    whole = torch.tensor([[0.0, 0.0, 4.0, 4.0]]).repeat(1000, 1)
    flips = torch.rand(1000, generator=gen()) < 0.5
    out = augment.resized_crop_flip(x, whole, flips, 4)
    torch.testing.assert_close(out[~flips], x[~flips])
    torch.testing.assert_close(out[flips], x[flips].flip(-1))
    # the full pipeline flips about half of the images (a left-right gradient image tells which)
    ramp = (torch.arange(32).view(1, 1, 1, 32).expand(4000, 3, 32, 32) * 8).to(torch.uint8)
    g = gen(1)
    n = 4000
    boxes = augment.crop_boxes(n, 32, 32, g, torch.device("cpu"))
    flipped = augment.resized_crop_flip(to_float(ramp), boxes, torch.rand(n, generator=g) < 0.5, 32)
    rate = (flipped[:, 0, 16, -1] < flipped[:, 0, 16, 0]).float().mean().item()
    assert rate == pytest.approx(0.5, abs=0.04)


def test_grayscale_rate():
    x = torch.rand(5000, 3, 4, 4, generator=gen())
    out = augment.random_grayscale(x, gen(1), p=0.2)
    gray = (out[:, 0] == out[:, 1]).all(dim=(1, 2)) & (out[:, 1] == out[:, 2]).all(dim=(1, 2))
    assert gray.float().mean().item() == pytest.approx(0.2, abs=0.02)


def test_color_jitter_rate_and_identity_when_off():
    x = torch.rand(4000, 3, 4, 4, generator=gen())
    unchanged = (augment.color_jitter(x, gen(2)) == x).all(dim=(1, 2, 3)).float().mean().item()
    assert unchanged == pytest.approx(0.2, abs=0.03)
    assert torch.equal(augment.color_jitter(x, gen(3), p=0.0), x)


@pytest.mark.parametrize("ours, theirs, factor", [
    (augment.adjust_brightness, TF.adjust_brightness, 1.3),
    (augment.adjust_contrast, TF.adjust_contrast, 0.7),
    (augment.adjust_saturation, TF.adjust_saturation, 1.4),
    (augment.adjust_hue, TF.adjust_hue, -0.08),
])
def test_adjustments_match_torchvision(ours, theirs, factor):
    x = torch.rand(6, 3, 8, 8, generator=gen())
    torch.testing.assert_close(ours(x, torch.full((6,), factor)), theirs(x, factor), atol=1e-4, rtol=0)


def test_per_image_factors_are_independent():
    x = torch.full((2000, 3, 2, 2), 0.5)
    out = augment.adjust_brightness(x, augment._uniform(0.6, 1.4, 2000, gen(), x.device))
    means = out.mean(dim=(1, 2, 3))
    assert means.unique().numel() > 1900
    assert means.min() < 0.32 and means.max() > 0.68


def test_jitter_order_is_random_per_image(monkeypatch):
    # With every factor fixed, identical images can only come out differently through the order of the four
    # adjustments (they do not commute), so a per-image order shows as many distinct outputs.
    monkeypatch.setattr(augment, "_uniform", lambda lo, hi, n, g, device: torch.full((n,), hi, device=device))
    x = torch.rand(1, 3, 8, 8, generator=gen(5)).repeat(500, 1, 1, 1)
    out = augment.color_jitter(x, gen(6), p=1.0)
    distinct = {tuple(v) for v in out.mean(dim=(2, 3)).round(decimals=5).tolist()}
    assert len(distinct) > 12  # 24 orders; several coincide


def test_blur_smooths_and_keeps_shape():
    x = torch.rand(64, 3, 32, 32, generator=gen())
    out = augment.gaussian_blur(x, gen(1), p=1.0)
    assert out.shape == x.shape
    assert out.diff(dim=-1).abs().mean() < x.diff(dim=-1).abs().mean()
    torch.testing.assert_close(augment.gaussian_blur(x, gen(1), p=0.0), x, atol=1e-5, rtol=0)


def test_same_seed_same_views():
    images = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    a = augment.two_views(images, gen(7), 32, blur=True)
    b = augment.two_views(images, gen(7), 32, blur=True)
    assert all(torch.equal(p, q) for p, q in zip(a, b))


def test_crop_matches_torchvision_resized_crop_when_upsampling():
    """Crop then resize, as torchvision does: the grid never samples outside the box, flipped or not."""
    g = gen(3)
    x = torch.rand(64, 3, 32, 32, generator=g)
    boxes = augment.crop_boxes(64, 32, 32, g, torch.device("cpu"), scale=(0.08, 0.5))
    flips = torch.rand(64, generator=g) < 0.5
    ours = augment.resized_crop_flip(x, boxes, flips, 32)
    for i, (top, left, h, w) in enumerate(boxes.int().tolist()):
        theirs = TF.resized_crop(x[i], top, left, h, w, [32, 32], antialias=False)
        theirs = theirs.flip(-1) if flips[i] else theirs
        torch.testing.assert_close(ours[i], theirs, atol=1e-5, rtol=0)


def test_crop_scale_and_grayscale_probability_are_honoured():
    images = torch.randint(0, 256, (2000, 3, 8, 8), dtype=torch.uint8, generator=gen())
    views = augment.simclr_view(images, gen(1), 8, grayscale_p=0.0)
    assert not ((views[:, 0] == views[:, 1]) & (views[:, 1] == views[:, 2])).all(dim=(1, 2)).any()
    views = augment.simclr_view(images, gen(1), 8, grayscale_p=1.0)
    assert ((views[:, 0] == views[:, 1]) & (views[:, 1] == views[:, 2])).all()
    boxes = augment.crop_boxes(5000, 32, 32, gen(), torch.device("cpu"), scale=(0.2, 1.0))
    assert (boxes[:, 2] * boxes[:, 3] / 1024).min() >= 0.17  # 0.2 less rounding to whole pixels
