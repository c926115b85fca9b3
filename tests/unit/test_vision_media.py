"""What the worker refuses before llama.cpp decodes an image: unknown formats, and sizes whose
decoded pixels would not fit (a tiny compressed file can claim billions)."""

from __future__ import annotations

import struct
import zlib

import pytest

from corral.api.errors import BadRequestError
from corral.worker.vision import BAD_IMAGE, MAX_IMAGES, MAX_PIXELS, check_count, check_media, placeholder, tag_images
from tests.support.images import png, png_claiming


def jpeg_claiming(width: int, height: int) -> bytes:
    app0 = b"\xff\xe0" + struct.pack(">H", 16) + b"JFIF\x00" + bytes(9)
    sof = b"\xff\xc0" + struct.pack(">HBHHB", 11, 8, height, width, 1) + bytes(3)
    return b"\xff\xd8" + app0 + sof + b"\xff\xd9"


@pytest.mark.parametrize("data", [png(4, 4, lambda x, y: (x, y, 0)), png_claiming(6000, 6000), jpeg_claiming(4000, 3000),
                                  b"GIF89a" + struct.pack("<HH", 640, 480) + bytes(8),
                                  b"BM" + bytes(16) + struct.pack("<ii", 100, -100) + bytes(30),
                                  b"RIFF\x00\x00\x00\x00WAVEfmt ", b"fLaC\x00\x00"])
def test_images_and_audio_within_bounds_pass(data: bytes):
    check_media(data)


@pytest.mark.parametrize("data, size", [(png_claiming(60_000, 60_000), "60000x60000"),
                                        (jpeg_claiming(65_535, 65_535), "65535x65535"),
                                        (b"GIF89a" + struct.pack("<HH", 65_535, 1_000) + bytes(8), "65535x1000")])
def test_images_over_the_pixel_bound_are_refused(data: bytes, size: str):
    with pytest.raises(BadRequestError) as raised:
        check_media(data)
    assert str(raised.value) == f"image too large: {size} pixels (at most {MAX_PIXELS:,})"


@pytest.mark.parametrize("data", [b"", b"hello", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"\xff\xd8" + b"\xff\xe0\x00\x02" * 3,
                                  b"GIF89a", b"<svg xmlns='http://www.w3.org/2000/svg'/>", b"8BPS" + bytes(40)])
def test_unknown_or_truncated_data_is_no_image(data: bytes):
    with pytest.raises(BadRequestError) as raised:
        check_media(data)
    assert str(raised.value) == BAD_IMAGE


def test_a_png_whose_pixels_inflate_past_its_size_is_no_image():
    """A zlib bomb: the header says 1x1, the pixel stream inflates to 50 MB (stb_image would hold it)."""
    header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    bomb = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(bytes(50_000_000), 9))
    assert len(bomb) < 100_000
    with pytest.raises(BadRequestError) as raised:
        check_media(bomb)
    assert str(raised.value) == BAD_IMAGE
    check_media(png(300, 200, lambda x, y: (x % 256, y % 256, 7)))  # a real one inflates to its size


def test_images_are_tagged_as_ollama_tags_them():
    assert tag_images("Describe", 0, 2) == "[img-0][img-1]Describe"
    assert tag_images("a [img] b [img] c", 3, 3) == "[img-5]a [img-3] b [img-4] c"
    assert tag_images("[img][img][img]", 0, 1) == "[img-0][img][img]"
    assert tag_images("x" * 1_000_000 + "[img]" * 1000, 0, 1000).count("[img-") == 1000  # linear, not quadratic


def test_placeholders_differ_by_image_and_by_part():
    a, b = png(4, 4, lambda x, y: (1, 2, 3)), png(4, 4, lambda x, y: (3, 2, 1))
    assert placeholder(a, 0) == placeholder(a, 0) < 0
    assert len({placeholder(a, 0), placeholder(a, 1), placeholder(b, 0)}) == 3
    check_count(MAX_IMAGES)
    with pytest.raises(BadRequestError) as raised:
        check_count(MAX_IMAGES + 1)
    assert str(raised.value) == f"too many images: {MAX_IMAGES + 1} (at most {MAX_IMAGES} in one request)"
