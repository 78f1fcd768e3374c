"""Reference images as Flux2KleinPipeline prepares them, before the VAE encodes them.

Each image is checked (sides of at least 64 pixels, aspect ratio at most 8:1), scaled down with
Lanczos to about a megapixel when larger, cut to a centred crop whose sides are multiples of 16, and
turned into RGB values in [-1, 1]: the same PIL operations in the same order as diffusers, so that the
pixels match exactly.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

from ollama_img.models.flux2 import MAX_REFERENCES

MAX_AREA = 1024 * 1024  # larger references are scaled down to about this many pixels
MIN_SIDE = 64
MAX_ASPECT = 8
MULTIPLE = 16  # the VAE's 8 times the 2x2 token patch


def check(image, index: int) -> None:
    """Raise ValueError naming reference `index` (1-based) when diffusers would refuse it."""
    if not isinstance(image, Image.Image):
        raise ValueError(f"reference image {index} must be a PIL image, got {type(image).__name__}")
    width, height = image.size
    if width < MIN_SIDE or height < MIN_SIDE:
        raise ValueError(
            f"reference image {index} is {width}x{height}: both sides must be at least {MIN_SIDE}"
        )
    if max(width / height, height / width) > MAX_ASPECT:
        raise ValueError(
            f"reference image {index} is {width}x{height}: the aspect ratio must be at most {MAX_ASPECT}:1"
        )


def check_all(images: list) -> None:
    """`check` each image, and their number."""
    if len(images) > MAX_REFERENCES:
        raise ValueError(f"at most {MAX_REFERENCES} reference images, got {len(images)}")
    for i, image in enumerate(images, 1):
        check(image, i)


def scaled_size(width: int, height: int) -> tuple[int, int]:
    """The size an image is scaled to first: down to about MAX_AREA pixels when larger."""
    if width * height <= MAX_AREA:
        return width, height
    scale = math.sqrt(MAX_AREA / (width * height))
    return int(width * scale), int(height * scale)


def prepared_size(width: int, height: int) -> tuple[int, int]:
    """The size of the prepared image: scaled, then cut to multiples of 16."""
    width, height = scaled_size(width, height)
    return width // MULTIPLE * MULTIPLE, height // MULTIPLE * MULTIPLE


def prepare(image: Image.Image) -> np.ndarray:
    """(1, H, W, 3) float32 in [-1, 1], H and W multiples of 16."""
    if scaled_size(*image.size) != image.size:
        image = image.resize(scaled_size(*image.size), Image.Resampling.LANCZOS)
    width, height = image.size
    crop_w, crop_h = prepared_size(width, height)
    left, top = (width - crop_w) // 2, (height - crop_h) // 2
    image = image.crop((left, top, left + crop_w, top + crop_h)).convert("RGB")
    pixels = np.asarray(image, dtype=np.float32) / 255.0
    return (2.0 * pixels - 1.0)[None]
