"""The Python API from a start image: what `generate(image=, mask=, strength=, noise=)` makes of its
arguments, and the clear ValueError for each one it cannot use."""

import numpy as np
import pytest
from PIL import Image

from tests.fixtures.images import picture, rectangle_mask

PROMPT = "a lighthouse"


@pytest.fixture(scope="module")
def pipe(tiny_folder):
    from ollama_img import load_pipeline

    return load_pipeline(tiny_folder)


def test_strength_one_is_text_to_image_from_the_same_seed(pipe):
    """At strength 1 the start sigma is 1: the latents are the noise alone, whatever the image."""
    kwargs = dict(width=32, height=48, steps=2, seed=11)
    plain = pipe.denoise(PROMPT, **kwargs)
    edited = pipe.denoise(PROMPT, image=picture(32, 48), strength=1.0, **kwargs)
    assert np.array_equal(np.array(plain), np.array(edited))


def test_the_steps_that_run_and_what_on_step_hears(pipe):
    calls = []
    image = picture(32, 32)
    pipe.generate(
        PROMPT, image=image, strength=0.3, steps=5, seed=1, on_step=lambda k, n: calls.append((k, n))
    )
    assert calls == [(1, 2), (2, 2)]  # diffusers skips int(5 - 5 * 0.3) = int(3.5) = 3 steps
    calls.clear()
    pipe.generate(PROMPT, image=image, steps=9, seed=1, on_step=lambda k, n: calls.append((k, n)))
    assert calls[-1] == (6, 6)  # the default strength, 0.6, of 9 steps: int(9 - 5.4) = 3 skipped


def test_outside_the_mask_the_latents_end_as_the_image_latents(pipe):
    from ollama_img.models.zimage.edit import image_pixels, latent_mask

    image, mask = picture(64, 48), rectangle_mask(64, 48)
    final = np.array(pipe.denoise(PROMPT, image=image, mask=mask, steps=3, seed=2))
    clean = np.array(pipe.encode_image(image_pixels(image, 64, 48)))
    keep = latent_mask(mask, 64, 48, 8) == 0
    keep = np.broadcast_to(keep, final.shape)
    assert keep.any() and (~keep).any()
    assert np.allclose(final[keep], clean[keep], atol=1e-6)
    assert not np.allclose(final[~keep], clean[~keep], atol=1e-2)


def test_sizes_come_from_the_image_unless_asked(pipe):
    image = picture(72, 56)
    assert pipe.size_for(image=image) == (64, 48)
    assert pipe.size_for(width=32, image=image) == (32, 48)
    assert pipe.size_for(width=32, height=32, image=image) == (32, 32)
    assert pipe.size_for() == (1024, 1024)
    assert pipe.generate(PROMPT, image=image, steps=1, seed=0).size == (64, 48)
    assert pipe.generate(PROMPT, image=image, width=32, height=16, steps=1, seed=0).size == (32, 16)


def test_any_mode_is_a_start_image(pipe):
    """A transparent RGBA image is the same start as that image flattened onto white."""
    rgba = picture(32, 32).convert("RGBA")
    rgba.putalpha(Image.new("L", (32, 32), 0).point(lambda _: 0))
    white = Image.new("RGB", (32, 32), (255, 255, 255))
    kwargs = dict(steps=2, seed=3, strength=0.5)
    assert np.array_equal(
        np.asarray(pipe.generate(PROMPT, image=rgba, **kwargs)),
        np.asarray(pipe.generate(PROMPT, image=white, **kwargs)),
    )
    for mode in ("L", "P", "CMYK"):
        assert pipe.generate(PROMPT, image=picture(32, 32).convert(mode), steps=1, seed=0).size == (32, 32)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(mask=rectangle_mask(32, 32)), "mask needs a start image"),
        (dict(strength=0.5), "strength needs a start image"),
        (dict(noise=np.zeros((1, 16, 4, 4), np.float32)), "noise needs a start image"),
        (dict(image=picture(32, 32), strength=0), "strength must be more than 0 and at most 1"),
        (dict(image=picture(32, 32), strength=1.5), "strength must be more than 0 and at most 1"),
        (dict(image=picture(32, 32), strength=1e-300), "strength must be more than 0"),
        (dict(image=picture(32, 32), mask=rectangle_mask(32, 48)), "the mask is 32x48 but the image 32x32"),
        (
            dict(image=picture(32, 32), noise=np.zeros((1, 16, 2, 2), np.float32)),
            r"noise must have shape \(1, 16, 4, 4\)",
        ),
        (dict(image=picture(32, 32), latents=np.zeros((1, 16, 4, 4), np.float32)), "pass noise="),
        (dict(image=picture(10, 40)), "the start image is 10x40: each side must be at least 16"),
        (dict(image=picture(32, 32), width=24), "width must be a positive multiple of 16"),
    ],
)
def test_what_cannot_be_used_is_a_clear_value_error(pipe, kwargs, message):
    with pytest.raises(ValueError, match=message):
        pipe.generate(PROMPT, steps=2, seed=0, **kwargs)
