"""Images that come in (a start image, a mask, reference images): bounded, checked, decoded, normalised.

Bytes from a request or a file are refused, with a message naming where they came from, when they are
too many bytes, not base64, not a PNG, JPEG or WebP image, more pixels than `MAX_INPUT_PIXELS` (read
from the file's header, before anything is decoded: a small file can claim a huge image), or damaged
or truncated. Decoded pictures honour their EXIF orientation. `to_rgb` and `mask_grey` bring any PIL
mode to what the pipelines compute with: RGB (transparency flattened onto white) and a grey mask.

PIL is imported inside the functions: the CLI imports this module (through the options table) on
every command, and commands that send no image must not pay for PIL.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import TYPE_CHECKING

from ollama_img.errors import UserError

if TYPE_CHECKING:
    from PIL import Image

# The bounds on images in one request (the body holding them is bounded by the engine: its
# limits.MAX_BODY_BYTES). A model takes at most what its capabilities say; these hold whatever the model.
MAX_INPUT_IMAGES = 16  # images in one request (OpenAI's edits API takes up to 16)
MAX_IMAGE_BYTES = 32 * 2**20  # one image file as sent
MAX_INPUT_PIXELS = 4096 * 4096  # one image, decoded: a 12-megapixel photo fits, a decompression bomb not
MAX_FORM_FIELDS = 64  # non-file fields of a multipart upload
MAX_FORM_FIELD_BYTES = 2**20  # one non-file field (a prompt)

FORMATS = ("PNG", "JPEG", "WEBP")  # what PIL may try: no other decoder ever sees request bytes
FORMAT_NAMES = "a PNG, JPEG or WebP image"
EXIF_ORIENTATION = 0x0112


@dataclass(frozen=True, eq=False)
class InputImage:
    """One image a request sent: its bytes, the name errors use ("'images'", "--image cat.png"), and its
    header-checked picture (size known, pixels not decoded until `decoded()`)."""

    data: bytes = field(repr=False)
    name: str
    picture: Image.Image = field(repr=False)

    @cached_property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) as shown, EXIF orientation applied."""
        return oriented_size(self.picture)

    def decoded(self) -> InputImage:
        """The same image with its pixels decoded and turned upright; a UserError when it is damaged."""
        return replace(self, picture=decode(self.picture, self.name))


def read(data: bytes, name: str) -> InputImage:
    """Bytes of an image file, checked from its header (not decoded yet)."""
    if len(data) > MAX_IMAGE_BYTES:
        raise UserError(f"{name} is too large: {len(data)} bytes, at most {MAX_IMAGE_BYTES}")
    return InputImage(data=data, name=name, picture=open_header(data, name))


def from_text(value: str, name: str) -> bytes:
    """The bytes of an image sent as text: base64, or a data: URL holding base64. URLs that would have
    to be fetched are refused: the engine reads images from requests only."""
    payload = value
    if value.startswith("data:"):
        header, comma, payload = value.partition(",")
        if not comma or not header.endswith(";base64"):
            raise UserError(f"{name} is a data: URL without base64 data (data:image/png;base64,...)")
    elif value.startswith(("http://", "https://", "file:")):
        raise UserError(f"{name} is a URL: send the image itself, base64 or as a data: URL")
    limit = (MAX_IMAGE_BYTES + 2) // 3 * 4  # the base64 length of MAX_IMAGE_BYTES
    if len(payload) > 2 * limit or len(payload := "".join(payload.split())) > limit:  # line breaks aside
        raise UserError(f"{name} is too large: more than {MAX_IMAGE_BYTES} bytes")
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise UserError(f"{name} is not valid base64") from None


def open_header(data: bytes, name: str) -> Image.Image:
    """The image PIL sees in `data`, with only its header read: format and size checked."""
    from PIL import Image, UnidentifiedImageError

    try:
        picture = Image.open(io.BytesIO(data), formats=FORMATS)
    except Image.DecompressionBombError:
        raise UserError(f"{name} is too large: more than {MAX_INPUT_PIXELS} pixels") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError):
        raise UserError(f"{name} is not {FORMAT_NAMES}") from None
    width, height = picture.size
    if width < 1 or height < 1:
        raise UserError(f"{name} has no pixels ({width}x{height})")
    if width * height > MAX_INPUT_PIXELS:
        raise UserError(
            f"{name} is too large: {width}x{height} pixels, at most {MAX_INPUT_PIXELS} "
            f"({MAX_INPUT_PIXELS**0.5:.0f}x{MAX_INPUT_PIXELS**0.5:.0f}); make it smaller first"
        )
    return picture


def decode(picture: Image.Image, name: str) -> Image.Image:
    """The pixels, decoded and turned upright (EXIF orientation); a UserError for a damaged file."""
    from PIL import ImageOps

    try:
        picture.load()
        return ImageOps.exif_transpose(picture)
    except Exception as exc:  # any decoder failure (truncated data, bad zlib or JPEG stream) is the file's
        reason = str(exc) or type(exc).__name__
        raise UserError(f"{name} is damaged or truncated ({reason})") from None


def oriented_size(picture: Image.Image) -> tuple[int, int]:
    """(width, height) after the EXIF orientation is applied (orientations 5 to 8 turn it a quarter).
    Read from the EXIF the header held: `getexif()` would decode a PNG's pixels to look further."""
    from PIL import Image

    width, height = picture.size
    try:
        exif = Image.Exif()
        if picture.info.get("exif"):
            exif.load(picture.info["exif"])
        orientation = exif.get(EXIF_ORIENTATION)
    except Exception:  # unreadable EXIF is no orientation (as exif_transpose treats it)
        orientation = None
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


# -- modes ---------------------------------------------------------------------------------------


def to_rgb(picture: Image.Image) -> Image.Image:
    """An RGB picture of any input: upright, transparency flattened onto white, grey / palette / CMYK /
    16-bit converted."""
    from PIL import Image, ImageOps

    picture = _eight_bit(ImageOps.exif_transpose(picture))
    if picture.mode == "RGB" and "transparency" not in picture.info:
        return picture
    if _has_alpha(picture):
        rgba = picture.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return picture.convert("RGB")


def mask_grey(picture: Image.Image) -> Image.Image:
    """A mask as the pipelines read it, in mode L (or RGB, which they turn grey after resizing, as
    diffusers does): white repaints, black keeps. A mask with transparent pixels follows OpenAI's
    convention instead: transparent repaints, opaque keeps."""
    from PIL import ImageOps

    picture = _eight_bit(ImageOps.exif_transpose(picture))
    if _has_alpha(picture):
        alpha = picture.convert("RGBA").getchannel("A")
        if alpha.getextrema()[0] < 255:
            return ImageOps.invert(alpha)
    if picture.mode in ("L", "RGB"):
        return picture
    return picture.convert("L" if picture.mode == "1" else "RGB")


def _has_alpha(picture: Image.Image) -> bool:
    return picture.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in picture.info


def _eight_bit(picture: Image.Image) -> Image.Image:
    """16-bit and 32-bit grey (I;16, I, F) scaled to 8-bit L: PIL's own conversion clips instead."""
    import numpy as np
    from PIL import Image

    if picture.mode.startswith("I;16") or picture.mode == "I":
        values = np.asarray(picture, dtype=np.float64) / 257.0
    elif picture.mode == "F":
        values = np.asarray(picture, dtype=np.float64)
    else:
        return picture
    return Image.fromarray(np.clip(np.round(values), 0, 255).astype(np.uint8), mode="L")
