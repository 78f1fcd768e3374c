"""Z-Image from a start image: image-to-image and inpainting, as diffusers' ZImageImg2ImgPipeline and
ZImageInpaintPipeline compute them.

Image-to-image encodes the start image (the VAE posterior's mean), skips the first steps of the schedule
(the fewer, the lower `strength`, rounded as diffusers rounds), noises the image latents to the sigma
where the remaining steps start, and runs them. Inpainting does the same and, after every step, puts
the known region back: outside the mask the latents become the image latents noised to the next
step's sigma (clean after the last step). Images are prepared as diffusers' VaeImageProcessor does:
sides rounded down to the size unit unless a size is asked, then a Lanczos resize to that size; the
mask is resized the same way, made grey, binarised at 0.5 and taken to latent size by nearest
neighbour.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import mlx.core as mx
import numpy as np
from PIL import Image

from ollama_img.image_input import mask_grey, oriented_size, to_rgb
from ollama_img.models.interface import MIN_STRENGTH

IMAGE_STRENGTH = 0.6  # ZImageImg2ImgPipeline's default
INPAINT_STRENGTH = 1.0  # ZImageInpaintPipeline's default


def start_size(image: Image.Image, unit: int) -> tuple[int, int]:
    """The size an image-to-image run makes when none is asked: the image's, each side rounded down
    to a multiple of `unit`."""
    width, height = oriented_size(image)
    return width - width % unit, height - height % unit


def first_step(steps: int, strength: float) -> int:
    """The schedule step image-to-image starts at: steps - steps * strength, truncated, as diffusers'
    `get_timesteps` computes it. A ValueError when `strength` leaves no step to run."""
    if not (isinstance(strength, int | float) and not isinstance(strength, bool)) or not (
        MIN_STRENGTH <= strength <= 1
    ):
        raise ValueError(
            f"strength must be more than 0 and at most 1 (at least {MIN_STRENGTH:g}), got {strength!r}"
        )
    init = min(steps * strength, steps)
    first = int(max(steps - init, 0))
    if first >= steps:
        raise ValueError(f"strength {strength} leaves no step to run out of {steps}")
    return first


def image_pixels(image: Image.Image, width: int, height: int) -> np.ndarray:
    """(1, height, width, 3) float32 in [-1, 1]: the image in RGB, Lanczos-resized to the size."""
    rgb = to_rgb(image).resize((width, height), resample=Image.Resampling.LANCZOS)
    return (2.0 * (np.asarray(rgb, dtype=np.float32) / np.float32(255.0)) - 1.0)[None]


def latent_mask(mask: Image.Image, width: int, height: int, scale: int) -> np.ndarray:
    """(1, 1, height // scale, width // scale) float32 of 0 and 1 (1: repaint)."""
    grey = mask_grey(mask).resize((width, height), resample=Image.Resampling.LANCZOS).convert("L")
    values = np.asarray(grey, dtype=np.float32) / np.float32(255.0)
    binary = np.where(values >= 0.5, np.float32(1.0), np.float32(0.0))
    rows = _nearest(height, height // scale)
    cols = _nearest(width, width // scale)
    return binary[rows][:, cols][None, None]


def _nearest(size_in: int, size_out: int) -> np.ndarray:
    """The source index of each output index for nearest-neighbour resizing, as torch computes it."""
    scale = np.float32(size_in) / np.float32(size_out)
    index = np.floor(np.arange(size_out, dtype=np.float32) * scale).astype(np.int64)
    return np.minimum(index, size_in - 1)


Blend = Callable[[int, mx.array], mx.array]  # (step just taken, latents) -> latents


@dataclass(frozen=True)
class Start:
    """Where a denoising run begins: its latents, the whole schedule (steps + 1 sigmas), the step it
    starts at, and what to do with the latents after each step (None: nothing)."""

    latents: mx.array
    sigmas: np.ndarray
    first: int = 0
    blend: Blend | None = None


def noised(clean: mx.array, noise: mx.array, sigma: np.float32) -> mx.array:
    """The flow-matching forward process: sigma * noise + (1 - sigma) * clean (scheduler.scale_noise)."""
    s = mx.array(sigma, dtype=mx.float32)
    return s * noise + (1.0 - s) * clean


def prepare(
    encode: Callable[[np.ndarray], mx.array],
    *,
    image: Image.Image,
    mask: Image.Image | None,
    strength: float,
    noise: mx.array,
    sigmas: np.ndarray,
    width: int,
    height: int,
    scale: int,
) -> Start:
    """The start of an image-to-image (or, with a mask, inpainting) run. `encode` takes (1, H, W, 3)
    pixels in [-1, 1] to scaled latents; `sigmas` is the whole schedule (steps + 1 values)."""
    steps = len(sigmas) - 1
    first = first_step(steps, strength)
    clean = encode(image_pixels(image, width, height)).astype(mx.float32)
    if clean.shape != noise.shape:
        raise ValueError(f"noise must have shape {tuple(clean.shape)}, got {tuple(noise.shape)}")
    latents = noised(clean, noise, sigmas[first])
    if mask is None:
        return Start(latents, sigmas, first)
    repaint = mx.array(latent_mask(mask, width, height, scale))
    keep = 1 - repaint

    def blend(step: int, x: mx.array) -> mx.array:
        known = noised(clean, noise, sigmas[step + 1]) if step < steps - 1 else clean
        return keep * known + repaint * x

    return Start(latents, sigmas, first, blend)
