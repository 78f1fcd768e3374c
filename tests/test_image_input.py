"""Images coming in: bounded and header-checked before decoding, decoded upright, any mode brought to RGB
(or a grey mask) the way the pipelines compute with."""

import base64
import io

import numpy as np
import pytest
from PIL import Image

from ollama_img import image_input
from ollama_img.errors import UserError
from tests.fixtures.images import picture, png_bytes, png_claiming, truncated


def encoded(image: Image.Image, fmt: str = "PNG", **save) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **save)
    return buffer.getvalue()


def rotated_jpeg(orientation: int) -> bytes:
    """A 40x24 JPEG (red left half) whose EXIF says to show it turned."""
    image = Image.new("RGB", (40, 24), (0, 0, 255))
    image.paste((255, 0, 0), (0, 0, 20, 24))
    exif = Image.Exif()
    exif[image_input.EXIF_ORIENTATION] = orientation
    return encoded(image, "JPEG", exif=exif.tobytes(), quality=95)


# -- reading ---------------------------------------------------------------------------------------


def test_base64_plain_wrapped_and_as_a_data_url_give_the_same_bytes():
    data = png_bytes(picture(20, 12))
    b64 = base64.b64encode(data).decode()
    wrapped = "\n".join(b64[i : i + 76] for i in range(0, len(b64), 76))
    for text in (b64, wrapped, f"data:image/png;base64,{b64}"):
        assert image_input.from_text(text, "'images'") == data


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("data:image/png,rawbytes", "'x' is a data: URL without base64 data"),
        ("https://example.com/a.png", "'x' is a URL: send the image itself"),
        ("file:///etc/passwd", "'x' is a URL"),
        ("%%%%", "'x' is not valid base64"),
        ("A" * (image_input.MAX_IMAGE_BYTES // 3 * 4 + 8), "'x' is too large"),
    ],
)
def test_text_that_is_no_image_file_is_refused(text, message):
    with pytest.raises(UserError, match=message):
        image_input.from_text(text, "'x'")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"GIF89a" + b"\0" * 40, "is not a PNG, JPEG or WebP image"),
        (encoded(Image.new("RGB", (8, 8)), "GIF"), "is not a PNG, JPEG or WebP image"),  # a real GIF
        (encoded(Image.new("RGB", (8, 8)), "BMP"), "is not a PNG, JPEG or WebP image"),
        (png_claiming(5000, 4000), r"is too large: 5000x4000 pixels, at most 16777216 \(4096x4096\)"),
        (png_claiming(30000, 30000), "is too large: more than 16777216 pixels"),  # PIL's own bomb check
        (b"\0" * (image_input.MAX_IMAGE_BYTES + 1), "is too large: 33554433 bytes"),
    ],
)
def test_files_are_refused_from_their_header_before_decoding(data, message):
    with pytest.raises(UserError, match=f"^cat.png {message}"):
        image_input.read(data, "cat.png")


def test_a_truncated_file_passes_the_header_check_and_fails_decoding():
    item = image_input.read(truncated(png_bytes(picture(64, 64))), "'image'")
    assert item.size == (64, 64)
    with pytest.raises(UserError, match=r"^'image' is damaged or truncated \("):
        item.decoded()


def test_exif_orientation_turns_the_size_and_the_pixels():
    item = image_input.read(rotated_jpeg(6), "a.jpg")  # 6: turn 90 degrees clockwise to show it
    assert item.size == (24, 40) and item.picture.size == (40, 24)
    upright = item.decoded().picture
    assert upright.size == (24, 40)
    top, bottom = np.asarray(upright)[2, 12], np.asarray(upright)[-3, 12]
    assert top[0] > 200 > top[2] and bottom[2] > 200 > bottom[0]  # the red half is on top now


def test_the_digest_is_of_the_bytes_as_sent():
    import hashlib

    data = png_bytes(picture(16, 16))
    assert image_input.read(data, "x").sha256 == hashlib.sha256(data).hexdigest()


# -- modes -----------------------------------------------------------------------------------------


def test_transparency_is_flattened_onto_white():
    rgba = Image.new("RGBA", (4, 1), (0, 0, 0, 0))
    rgba.putpixel((1, 0), (200, 0, 0, 255))
    rgba.putpixel((2, 0), (0, 0, 0, 128))
    got = np.asarray(image_input.to_rgb(rgba))
    assert got[0, 0].tolist() == [255, 255, 255] and got[0, 1].tolist() == [200, 0, 0]
    assert 125 <= got[0, 2, 0] <= 128 and got[0, 2, 0] == got[0, 2, 1] == got[0, 2, 2]


@pytest.mark.parametrize("mode", ["L", "LA", "P", "CMYK", "1", "I;16", "YCbCr"])
def test_every_mode_becomes_rgb(mode):
    source = picture(16, 8)
    image = source.convert(mode) if mode != "I;16" else None
    if mode == "I;16":  # 16-bit grey, as a 16-bit PNG opens: scaled to 8 bits, not clipped
        grey = np.asarray(source.convert("L"), dtype=np.uint16) * 257
        image = Image.open(io.BytesIO(encoded(Image.fromarray(grey))))
    rgb = image_input.to_rgb(image)
    assert rgb.mode == "RGB" and rgb.size == (16, 8)
    if mode in ("L", "I;16"):
        assert np.array_equal(np.asarray(rgb)[..., 0], np.asarray(source.convert("L")))


def test_a_palette_image_with_a_transparent_entry_is_flattened_too():
    image = Image.new("P", (2, 1))
    image.putpalette([10, 20, 30, 200, 100, 50] + [0] * 762)
    image.putpixel((1, 0), 1)
    image.info["transparency"] = 0
    assert np.asarray(image_input.to_rgb(image)).tolist() == [[[255, 255, 255], [200, 100, 50]]]


def test_masks_white_repaints_or_openai_transparent_repaints():
    grey = Image.new("L", (2, 1))
    grey.putpixel((1, 0), 255)
    assert np.asarray(image_input.mask_grey(grey)).tolist() == [[0, 255]]
    openai_style = Image.new("RGBA", (2, 1), (0, 0, 0, 255))
    openai_style.putpixel((1, 0), (0, 0, 0, 0))  # transparent: edit here
    got = image_input.mask_grey(openai_style)
    assert got.mode == "L" and np.asarray(got).tolist() == [[0, 255]]
    opaque = Image.new("RGBA", (2, 1), (255, 255, 255, 255))
    assert image_input.mask_grey(opaque).mode == "RGB"  # no transparency: its colours are the mask
    assert image_input.mask_grey(Image.new("1", (2, 1), 1)).mode == "L"


def test_sizes_are_read_without_decoding():
    """The checks before the queue (mask size, the size an edit makes) read headers only."""
    item = image_input.read(png_bytes(picture(48, 32)), "x")
    assert item.size == (48, 32)
    assert item.picture.tile  # still to decode (PIL empties `tile` once it has loaded the pixels)
    item.decoded()
    assert not item.picture.tile
