"""Odd but real image files, made here, through the HTTP API: each gets the answer its picture deserves or a
clear 4xx problem, never a 5xx. Cases test_api.py and test_model.py already cover (every mode, 16-bit grey,
animated GIF, a truncated PNG, text bytes, an over-limit image, Pillow's own bomb check) are not repeated."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from factories import colour_images
from PIL import Image

from benchmarks.harness.images import png_bytes

IMAGE = colour_images(1, seed=3)[0][0]


def embedding(client, data: bytes, name: str) -> list[float]:
    response = client.post("/embed", files=[("images", (name, data, "application/octet-stream"))])
    assert response.status_code == 200, response.text
    return response.json()["embeddings"][0]["representation"]


def encoded(image: Image.Image, format: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format, **options)
    return buffer.getvalue()


def cmyk_jpeg() -> tuple[bytes, bytes]:
    data = encoded(Image.fromarray(IMAGE).convert("CMYK"), "JPEG", quality=95)
    return data, png_bytes(Image.open(io.BytesIO(data)).convert("RGB"))


def palette_png_with_transparency() -> tuple[bytes, bytes]:
    image = Image.fromarray(IMAGE).convert("P")
    image.info["transparency"] = 0  # palette entry 0 is transparent: a tRNS chunk
    data = encoded(image, "PNG", transparency=0)
    assert b"tRNS" in data
    return data, png_bytes(Image.open(io.BytesIO(data)).convert("RGB"))


def one_pixel() -> tuple[bytes, bytes]:
    return png_bytes(Image.new("RGB", (1, 1), (10, 200, 30))), png_bytes(Image.new("RGB", (16, 16), (10, 200, 30)))


@pytest.mark.parametrize("make", [cmyk_jpeg, palette_png_with_transparency, one_pixel], ids=lambda make: make.__name__)
def test_odd_but_readable_images_get_the_answer_their_picture_deserves(client, make):
    data, same_picture_as_rgb_png = make()
    np.testing.assert_allclose(embedding(client, data, "odd"), embedding(client, same_picture_as_rgb_png, "rgb.png"),
                               atol=1e-5)


def forged_png_header(width: int, height: int) -> bytes:
    """A 1x1 PNG whose header (with a valid CRC) claims width x height: decoding it would allocate that much."""
    data = bytearray(png_bytes(Image.new("L", (1, 1))))
    struct.pack_into(">II", data, 16, width, height)  # IHDR data starts after signature (8), length and type (8)
    struct.pack_into(">I", data, 29, zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def unreadable_tiff() -> bytes:
    """A TIFF whose compression tag names JPEG 2000 (34712), which Pillow cannot decode."""
    data = bytearray(encoded(Image.fromarray(IMAGE), "TIFF"))
    ifd = struct.unpack_from("<I", data, 4)[0]
    for entry in range(struct.unpack_from("<H", data, ifd)[0]):
        offset = ifd + 2 + 12 * entry
        if struct.unpack_from("<H", data, offset)[0] == 259:
            struct.pack_into("<H", data, offset + 8, 34712)
    return bytes(data)


SVG = b'<svg xmlns="http://www.w3.org/2000/svg" width="16" height="16"><rect width="16" height="16" fill="red"/></svg>'


@pytest.mark.parametrize("name, data, status, words", [pytest.param(*case, id=case[0]) for case in [
    ("truncated.jpg", encoded(Image.fromarray(IMAGE), "JPEG")[:300], 422, "corrupt or truncated"),
    # Refused from the header alone, by the service's pixel limit or Pillow's bomb check (whichever is lower).
    ("huge-header.png", forged_png_header(100_000, 100_000), 413, "pixels"),
    # 10,000 x 10,000 one-bit pixels compress to a few kilobytes: a real decompression bomb, under the body limit.
    ("bomb.png", encoded(Image.new("1", (10_000, 10_000)), "PNG", optimize=True), 413, "pixels"),
    ("drawing.svg", SVG, 415, "supported format"),
    ("unreadable.tif", unreadable_tiff(), 415, "supported format"),
]])
def test_unusable_images_are_a_clear_4xx(client, name, data, status, words):
    response = client.post("/classify", files=[("images", (name, data, "image/png"))])
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    detail = response.json()["detail"]
    assert name in detail and words in detail, detail
