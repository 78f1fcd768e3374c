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

MAX_AREA = 1024 * 1024  # larger references are scaled down to about this many pixels
MIN_SIDE = 64
MAX_ASPECT = 8
MULTIPLE = 16  # the VAE's 8 times the 2x2 token patch
MAX_REFERENCES = 10  # diffusers sets no limit; every reference adds up to 4096 tokens to each step


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


def prepare(image: Image.Image) -> np.ndarray:
    """(1, H, W, 3) float32 in [-1, 1], H and W multiples of 16."""
    width, height = image.size
    if width * height > MAX_AREA:
        scale = math.sqrt(MAX_AREA / (width * height))
        image = image.resize((int(width * scale), int(height * scale)), Image.Resampling.LANCZOS)
        width, height = image.size
    crop_w, crop_h = width // MULTIPLE * MULTIPLE, height // MULTIPLE * MULTIPLE
    left, top = (width - crop_w) // 2, (height - crop_h) // 2
    image = image.crop((left, top, left + crop_w, top + crop_h)).convert("RGB")
    pixels = np.asarray(image, dtype=np.float32) / 255.0
    return (2.0 * pixels - 1.0)[None]
