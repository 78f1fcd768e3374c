"""The banded PNG writer: any PNG reader gets the exact pixels and text back, and the bytes do not
depend on how many threads wrote them."""

import io
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

from ollama_img import png_writer
from ollama_img.png_writer import encode_rgb


def picture(height, width, seed=0):
    """Smooth gradients with noise: every Paeth branch is taken, as in a photograph."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 3 + y, 255 - y * 2, (x * y) % 256], axis=-1)
    return np.clip(base + rng.integers(-20, 21, base.shape), 0, 255).astype(np.uint8)


@pytest.mark.parametrize(("height", "width"), [(1, 1), (3, 7), (8, 5), (33, 96), (257, 130)])
def test_pixels_and_text_come_back_exactly(height, width):
    pixels = picture(height, width)
    text = {"prompt": "a café at night, 月 ☕", "seed": "7", "empty": ""}
    data = encode_rgb(pixels, text)
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        assert image.mode == "RGB" and image.size == (width, height)
        np.testing.assert_array_equal(np.asarray(image), pixels)
        assert image.text == text


def test_the_stream_is_one_valid_zlib_stream_with_its_checksum():
    data = encode_rgb(picture(64, 48), {})
    idat_at = data.index(b"IDAT")
    length = int.from_bytes(data[idat_at - 4 : idat_at], "big")
    raw = zlib.decompress(data[idat_at + 4 : idat_at + 4 + length])  # checks the Adler-32 too
    assert len(raw) == 64 * (48 * 3 + 1) and raw[0] == png_writer.PAETH


def test_bytes_do_not_depend_on_the_threads(monkeypatch):
    pixels = picture(200, 64, seed=3)
    written = []
    for threads in (1, 3, 8):
        with ThreadPoolExecutor(threads) as pool:
            monkeypatch.setattr(png_writer, "_POOL", [pool])
            written.append(encode_rgb(pixels, {"k": "v"}))
    assert written[0] == written[1] == written[2]


def test_photograph_like_images_compress_like_pillow():
    """Within a few percent of Pillow's PNG at the same zlib settings: splitting the stream costs little."""
    pixels = picture(256, 256, seed=1)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", compress_level=1, compress_type=zlib.Z_RLE)
    assert len(encode_rgb(pixels, {})) <= 1.05 * len(buffer.getvalue())


def test_only_rgb_bytes_are_taken():
    with pytest.raises(ValueError, match="uint8"):
        encode_rgb(np.zeros((4, 4, 4), np.uint8), {})
    with pytest.raises(ValueError, match="uint8"):
        encode_rgb(np.zeros((4, 4, 3), np.float32), {})
    for empty in ((0, 4, 3), (4, 0, 3)):  # a PNG has at least one pixel
        with pytest.raises(ValueError, match="uint8"):
            encode_rgb(np.zeros(empty, np.uint8), {})
    with pytest.raises(ValueError, match="keyword"):
        encode_rgb(np.zeros((2, 2, 3), np.uint8), {"k" * 80: "v"})
