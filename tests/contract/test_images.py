"""contract.images: any image size and mode becomes the evaluation's input; bad bytes are refused with a status;
the trainer reads files with the same decoding."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageOps

from benchmarks.harness.images import png_bytes
from contract.images import ImageError, decode_image, list_images
from trainer.data import load_split

rng = np.random.default_rng(0)
RGB = rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)


def test_rgb_at_the_input_size_is_untouched():
    image = rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)
    np.testing.assert_array_equal(decode_image(png_bytes(image), 16, 10**6), image)


def test_other_sizes_are_fitted_on_the_shorter_side_and_centre_cropped():
    expected = np.asarray(ImageOps.fit(Image.fromarray(RGB), (16, 16), Image.Resampling.BICUBIC))
    np.testing.assert_array_equal(decode_image(png_bytes(RGB), 16, 10**6), expected)


@pytest.mark.parametrize("mode", ["L", "LA", "RGBA", "P", "CMYK", "1"])
def test_every_mode_becomes_rgb(mode):
    image = Image.fromarray(RGB).convert(mode)
    out = decode_image(png_bytes(image, "TIFF" if mode == "CMYK" else "PNG"), 8, 10**6)
    assert out.shape == (8, 8, 3) and out.dtype == np.uint8
    expected = np.asarray(ImageOps.fit(image.convert("RGB"), (8, 8), Image.Resampling.BICUBIC))
    np.testing.assert_array_equal(out, expected)


def test_16_bit_greyscale_is_scaled_not_clipped():
    values = np.array([[0, 256 * 100, 65535, 256 * 7]], dtype=np.uint16).repeat(4, axis=0)
    image = Image.fromarray(values)  # mode I;16
    out = decode_image(png_bytes(image), 4, 10**6)
    np.testing.assert_array_equal(out[0, :, 0], [0, 100, 255, 7])
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()


@pytest.mark.parametrize("format, options", [
    ("GIF", {"duration": 100}), ("WEBP", {"duration": 100, "lossless": True}), ("PNG", {"duration": 100}),  # APNG
    ("TIFF", {}), ("TIFF", {"compression": "tiff_lzw"}), ("TIFF", {"compression": "jpeg"}),
    ("TIFF", {"big_tiff": True}),
])
def test_multi_frame_images_give_their_first_frame(format, options):
    """Every format the 415 message names decodes, a multi-page TIFF or an animation by its first frame."""
    frames = [Image.new("RGB", (8, 8), colour) for colour in [(255, 0, 0), (0, 0, 255), (0, 255, 0)]]
    if format == "TIFF":
        frames[2] = frames[2].resize((20, 10))  # a TIFF's pages are images of their own sizes
    data = io.BytesIO()
    frames[0].save(data, format=format, save_all=True, append_images=frames[1:], **options)
    assert Image.open(io.BytesIO(data.getvalue())).n_frames == 3
    out = decode_image(data.getvalue(), 8, 10**6)
    assert out[..., 0].min() > 200 and out[..., 2].max() < 50


@pytest.mark.parametrize("format", ["JPEG", "PNG", "GIF", "BMP", "WEBP", "TIFF", "PPM"])
def test_every_format_the_refusal_names_decodes(format):
    from contract.images import FORMATS

    assert format in FORMATS
    out = decode_image(png_bytes(RGB, format), 8, 10**6)
    assert out.shape == (8, 8, 3) and 60 < out.mean() < 200


def test_floating_point_tiffs_in_0_to_1_become_their_grey_levels():
    values = np.array([[0.0, 0.25, 0.5, 1.0]], dtype=np.float32).repeat(4, axis=0)
    out = decode_image(png_bytes(Image.fromarray(values), "TIFF"), 4, 10**6)  # mode F
    np.testing.assert_array_equal(out[0, :, 0], [0, 64, 128, 255])


@pytest.mark.parametrize("data, status, message", [
    (b"", 422, "empty"),
    (b"certainly not an image", 415, "not an image in a supported format"),
    (png_bytes(Image.new("RGB", (8, 8)), "PCX"), 415, "supported format"),  # a format Pillow knows, not allowed
    (png_bytes(RGB)[:60], 422, "corrupt or truncated"),
    (png_bytes(Image.new("L", (3000, 2000))), 413, "over the limit"),  # small file, 6M pixels
])
def test_bad_bytes_are_refused_with_a_status(data, status, message):
    with pytest.raises(ImageError, match=message) as caught:
        decode_image(data, 16, 1_000_000)
    assert caught.value.status == status


def test_pillows_own_bomb_check_is_a_413_too(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(ImageError, match="decompression bomb") as caught:
        decode_image(png_bytes(Image.new("L", (40, 30))), 16, 10**6)  # 1200 pixels: over Pillow's limit only
    assert caught.value.status == 413


def test_the_trainer_reads_files_as_the_service_reads_bytes(tmp_path):
    """One decoding for both sides: a 16-bit greyscale PNG, an animated GIF and an odd-sized JPEG in a training
    folder become the pixels decode_image gives the service for the same bytes."""
    frames = [Image.new("RGB", (12, 9), colour) for colour in [(255, 0, 0), (0, 0, 255)]]
    gif = io.BytesIO()
    frames[0].save(gif, format="GIF", save_all=True, append_images=frames[1:], duration=100)
    files = {"a.png": png_bytes(Image.fromarray(np.full((8, 8), 40_000, dtype=np.uint16))),
             "b.gif": gif.getvalue(), "c.jpg": png_bytes(RGB, "JPEG"), ".hidden.png": png_bytes(RGB)}
    for name, data in files.items():
        (tmp_path / "train" / "x").mkdir(parents=True, exist_ok=True)
        (tmp_path / "train" / "x" / name).write_bytes(data)
    assert [p.name for p in list_images(tmp_path)] == ["a.png", "b.gif", "c.jpg"]
    data = load_split(tmp_path, "train", image_size=8, cache_dir=None)
    expected = np.stack([decode_image(files[name], 8) for name in ("a.png", "b.gif", "c.jpg")])
    np.testing.assert_array_equal(data.images.permute(0, 2, 3, 1).numpy(), expected)
    assert data.images[0].float().mean() == 40_000 >> 8  # scaled to 8 bits, not clipped to white


def test_the_trainer_and_the_index_builder_read_a_data_folder_the_same_way(tmp_path):
    """One precedence for both: a labelled train/ folder wins over a CIFAR-10 batches folder beside it; an empty or
    missing folder is CIFAR-10 to download; any other folder is unlabelled images."""
    from contract.images import data_layout

    (tmp_path / "both" / "train" / "cat").mkdir(parents=True)
    (tmp_path / "both" / "cifar-10-batches-py").mkdir()
    (tmp_path / "empty").mkdir()
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "a.png").write_bytes(b"")
    assert [data_layout(tmp_path / name) for name in ("both", "empty", "missing", "photos")] == [
        "labelled", "cifar10", "cifar10", "folder"]


def test_decode_all_keeps_the_order_and_raises_the_first_error():
    from contract.images import decode_all

    assert decode_all(list(range(1000)), lambda i: i * i, desc="squares", bar=False, threads=4) == [
        i * i for i in range(1000)]

    def fails(i: int) -> int:
        if i == 700:
            raise ValueError("image 700 is broken")
        return i

    with pytest.raises(ValueError, match="image 700"):
        decode_all(list(range(1000)), fails, desc="failing", bar=False, threads=4)
