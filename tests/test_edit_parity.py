"""Parity with diffusers' ZImageImg2ImgPipeline and ZImageInpaintPipeline on the tiny float32 folder that
diffusers itself wrote (from the folder and from the store: `mlx_pipe`).

Both sides get the same noise (diffusers' `randn_tensor` is made to return it) and encode the start
image to the VAE posterior's mean (diffusers samples it: its `retrieve_latents` is made to take the
mean), so the noise is the only randomness and it is shared. Images are held to 2/255 at most and
0.2/255 on average, final latents to 1e-4 relative.
"""

import numpy as np
import pytest

from tests.fixtures.images import irregular_mask, picture, rectangle_mask
from tests.test_parity import PROMPT, assert_images_close, noise, rel_err

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def reference_edit(reference_pipe):
    """diffusers' two pipelines on the reference components; `run` patches their randomness per call."""
    from diffusers import ZImageImg2ImgPipeline, ZImageInpaintPipeline

    return {
        "img2img": ZImageImg2ImgPipeline(**reference_pipe.components),
        "inpaint": ZImageInpaintPipeline(**reference_pipe.components),
    }


def run_reference(monkeypatch, pipe, kind: str, drawn: np.ndarray, **kwargs):
    """diffusers' final latents and uint8 image, with `drawn` as its noise and the posterior's mean."""
    import importlib

    module = importlib.import_module(f"diffusers.pipelines.z_image.pipeline_z_image_{kind}")
    monkeypatch.setattr(module, "randn_tensor", lambda shape, **_: torch.from_numpy(drawn.copy()))
    monkeypatch.setattr(
        module, "retrieve_latents", lambda output, generator=None, sample_mode=None: output.latent_dist.mean
    )
    pipe.set_progress_bar_config(disable=True)
    lat = pipe(PROMPT, output_type="latent", **kwargs).images
    with torch.no_grad():  # decoded as the pipeline decodes with output_type="np"
        vae = pipe.vae
        pixels = vae.decode(lat / vae.config.scaling_factor + vae.config.shift_factor, return_dict=False)[0]
    img = pipe.image_processor.postprocess(pixels, output_type="np")[0]
    return lat.float().numpy(), (img * 255).round().astype(np.uint8)


def ours(pipe, **kwargs) -> tuple[np.ndarray, np.ndarray]:
    """ollama-img's final latents and image (generate() is decode(denoise()))."""
    latents = pipe.denoise(PROMPT, **kwargs)
    return np.array(latents), np.asarray(pipe.decode(latents))


IMG2IMG = {
    "strength-0.3": dict(image=(64, 64), strength=0.3, steps=5),  # starts at int(5 - 1.5) = step 3
    "strength-0.6": dict(image=(64, 64), strength=0.6, steps=9),  # Turbo's 9 steps: starts at int(3.6) = 3
    "strength-1.0": dict(image=(64, 64), strength=1.0, steps=4),
    "non-square": dict(image=(80, 48), strength=0.6, steps=4),
    # sides rounded down to 16 (83x50 -> 80x48) and a Lanczos resize, as diffusers' processor does
    "rounded-down-with-cfg": dict(image=(83, 50), strength=0.7, steps=4, guidance=2.0, negative="fog"),
}


@pytest.mark.parametrize("case", IMG2IMG)
def test_image_to_image_matches_diffusers(monkeypatch, mlx_pipe, reference_edit, case):
    c = IMG2IMG[case]
    (w, h), steps, strength = c["image"], c["steps"], c["strength"]
    image = picture(w, h, seed=len(case))
    out_w, out_h = w - w % 16, h - h % 16
    drawn = noise((1, 16, out_h // 8, out_w // 8), seed=sum(map(ord, case)))
    guidance, negative = c.get("guidance", 0.0), c.get("negative")
    ref_lat, ref_img = run_reference(
        monkeypatch,
        reference_edit["img2img"],
        "img2img",
        drawn,
        image=image,
        strength=strength,
        num_inference_steps=steps,
        guidance_scale=guidance,
        negative_prompt=negative,
    )
    kwargs = dict(
        image=image, strength=strength, steps=steps, guidance=guidance, negative_prompt=negative, noise=drawn
    )
    latents, image = ours(mlx_pipe, **kwargs)
    assert rel_err(latents, ref_lat) < 1e-4
    assert image.shape == (out_h, out_w, 3)
    assert_images_close(image, ref_img)


INPAINT = {
    "rectangle": dict(size=(64, 64), mask=rectangle_mask, steps=4),
    "irregular": dict(size=(80, 48), mask=irregular_mask, steps=4),
    "irregular-strength-0.6": dict(size=(64, 64), mask=irregular_mask, steps=5, strength=0.6),
}


@pytest.mark.parametrize("case", INPAINT)
def test_inpainting_matches_diffusers(monkeypatch, mlx_pipe, reference_edit, case):
    c = INPAINT[case]
    (w, h), steps = c["size"], c["steps"]
    image, mask = picture(w, h, seed=3), c["mask"](w, h)
    drawn = noise((1, 16, h // 8, w // 8), seed=sum(map(ord, case)))
    strength = {"strength": c["strength"]} if "strength" in c else {}  # else both default to 1.0
    ref_lat, ref_img = run_reference(
        monkeypatch,
        reference_edit["inpaint"],
        "inpaint",
        drawn,
        image=image,
        mask_image=mask,
        num_inference_steps=steps,
        guidance_scale=0.0,
        **strength,
    )
    kwargs = dict(image=image, mask=mask, steps=steps, noise=drawn, **strength)
    latents, result = ours(mlx_pipe, **kwargs)
    assert rel_err(latents, ref_lat) < 1e-4
    assert_images_close(result, ref_img)
