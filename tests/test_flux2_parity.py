"""Numerical parity with diffusers' Flux2KleinPipeline on a tiny float32 folder that diffusers itself wrote,
loaded from the folder and from the store.

Component tests hold each part to 1e-4 relative error (the sigmas and the reference images' pixels to
exact equality); the end-to-end tests hold the final image to 2/255 at most and 0.2/255 on average
(and the final latents to 1e-4 relative), for text-to-image at two sizes, with one and two reference
images, and for a base (guided) model.
"""

from __future__ import annotations

import warnings

import mlx.core as mx
import numpy as np
import pytest
from PIL import Image

torch = pytest.importorskip("torch")

from tests.fixtures.images import picture  # noqa: E402
from tests.test_parity import assert_images_close, noise, rel_err  # noqa: E402

PROMPT = "a cat playing piano under a golden sky"


def diffusers_condition_image(pipe, image: Image.Image) -> np.ndarray:
    """A reference image as Flux2KleinPipeline.__call__ prepares it, (1, H, W, 3) in [-1, 1]."""
    proc = pipe.image_processor
    proc.check_image_input(image)
    width, height = image.size
    if width * height > 1024 * 1024:
        image = proc._resize_to_target_area(image, 1024 * 1024)
        width, height = image.size
    unit = pipe.vae_scale_factor * 2
    tensor = proc.preprocess(
        image, height=height // unit * unit, width=width // unit * unit, resize_mode="crop"
    )
    return tensor.permute(0, 2, 3, 1).numpy()


# -- components ------------------------------------------------------------------------------------


def test_token_ids_and_padding_match_the_pipeline(flux2_pipe, flux2_reference_pipe):
    from ollama_img.models.chat_tokenizer import PromptTruncatedWarning

    tok = flux2_reference_pipe.tokenizer
    long = " ".join(["cinematic portrait of a red horse"] * 200)  # cut at 512 tokens, no padding left
    for prompt in (PROMPT, "", "日 月 火 — émoji 🐱 and  double  spaces\nnew line", long):
        text = tok.apply_chat_template(
            [{"role": "user", "content": prompt}],
            tokenize=False,
            add_generation_prompt=True,
            enable_thinking=False,
        )
        assert flux2_pipe.tokenizer.render(prompt) == text
        ref = tok(text, padding="max_length", truncation=True, max_length=512)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", PromptTruncatedWarning)
            ids, real = flux2_pipe.prompt_encoder.token_ids(prompt)
        assert ids == ref.input_ids
        assert real == sum(ref.attention_mask) and ref.attention_mask[:real] == [1] * real


@pytest.mark.parametrize("prompt", [PROMPT, "a dog " * 300])  # padded, and cut to 512 tokens
def test_text_embedding_matches_the_stacked_hidden_states(flux2_pipe, flux2_reference_pipe, prompt):
    from ollama_img.models.chat_tokenizer import PromptTruncatedWarning
    from tests.fixtures.flux2_reference import one_torch_thread

    with torch.no_grad(), one_torch_thread():
        ref, _ = flux2_reference_pipe.encode_prompt(prompt)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PromptTruncatedWarning)
        ours = np.array(flux2_pipe.encode_prompt(prompt))
    assert ours.shape == tuple(ref.shape) == (1, 512, 3 * 16)
    assert rel_err(ours, ref.numpy()) < 1e-4


def test_transformer_forward_matches_with_reference_tokens(flux2_pipe, flux2_reference_pipe):
    from ollama_img.models.flux2.transformer import grid_ids, reference_time, text_ids

    x = noise((1, 4 * 5 + 3 * 4, 32), seed=1)  # a 4x5 image, then a 3x4 reference image
    txt = noise((1, 24, 48), seed=2)
    img_ids = np.concatenate([grid_ids(4, 5), grid_ids(3, 4, reference_time(0))])
    t = np.array([0.37], dtype=np.float32)
    with torch.no_grad():
        ref = flux2_reference_pipe.transformer(
            hidden_states=torch.from_numpy(x),
            encoder_hidden_states=torch.from_numpy(txt),
            timestep=torch.from_numpy(t),
            img_ids=torch.from_numpy(img_ids)[None],
            txt_ids=torch.from_numpy(text_ids(24))[None],
            return_dict=False,
        )[0]
    ours = flux2_pipe.transformer(mx.array(x), mx.array(txt), mx.array(t), img_ids, text_ids(24))
    assert rel_err(np.array(ours), ref.numpy()) < 1e-4


def test_vae_encode_and_decode_tokens_match(flux2_pipe, flux2_reference_pipe):
    ref = flux2_reference_pipe
    image = np.tanh(noise((1, 64, 96, 3), seed=4))
    with torch.no_grad():
        latents = ref._encode_vae_image(torch.from_numpy(image).permute(0, 3, 1, 2), generator=None)
        ref_tokens = ref._pack_latents(latents).numpy()
    ours = np.array(flux2_pipe.vae.encode_tokens(mx.array(image)))
    assert ours.shape == ref_tokens.shape == (1, 4 * 6, 32)
    assert rel_err(ours, ref_tokens) < 1e-4

    tokens = noise((1, 3 * 5, 32), seed=5)
    with torch.no_grad():
        grid = torch.from_numpy(tokens).permute(0, 2, 1).reshape(1, 32, 3, 5)
        bn = ref.vae.bn
        grid = grid * torch.sqrt(bn.running_var.view(1, -1, 1, 1) + ref.vae.config.batch_norm_eps)
        grid = grid + bn.running_mean.view(1, -1, 1, 1)
        ref_image = ref.vae.decode(ref._unpatchify_latents(grid), return_dict=False)[0]
    ours_image = np.array(flux2_pipe.vae.decode_tokens(mx.array(tokens), 3, 5))
    assert rel_err(ours_image, ref_image.permute(0, 2, 3, 1).numpy()) < 1e-4


@pytest.mark.parametrize("seq_len", [16, 256, 4096, 4400])
def test_sigmas_match_the_scheduler_bit_for_bit(flux2_reference_pipe, seq_len):
    from diffusers import FlowMatchEulerDiscreteScheduler
    from diffusers.pipelines.flux2.pipeline_flux2_klein import compute_empirical_mu

    from ollama_img.models.flux2 import schedule

    config = dict(flux2_reference_pipe.scheduler.config)
    for dynamic in (True, False):
        config["use_dynamic_shifting"] = dynamic
        sched = FlowMatchEulerDiscreteScheduler.from_config(config)
        for steps in (1, 2, 4, 9, 28, 50):
            assert schedule.empirical_mu(seq_len, steps) == compute_empirical_mu(seq_len, steps)
            sched.set_timesteps(
                steps, sigmas=np.linspace(1.0, 1 / steps, steps), mu=compute_empirical_mu(seq_len, steps)
            )
            ours = schedule.sigmas(config, steps, seq_len)
            np.testing.assert_array_equal(ours, sched.sigmas.numpy())
            model_time = ((sched.timesteps / 1000).to(torch.float32) * 1000).numpy()
            np.testing.assert_array_equal(schedule.model_times(ours), model_time)


@pytest.mark.parametrize(
    "size, mode",
    [((80, 64), "RGB"), ((100, 72), "RGBA"), ((1400, 900), "RGB"), ((64, 500), "L"), ((97, 131), "P")],
)
def test_reference_images_are_prepared_pixel_for_pixel_as_diffusers(flux2_reference_pipe, size, mode):
    from ollama_img.models.flux2 import reference

    image = picture(*size, seed=sum(size)).convert(mode)
    ours = reference.prepare(image)
    ref = diffusers_condition_image(flux2_reference_pipe, image)
    assert ours.shape == ref.shape
    np.testing.assert_array_equal(ours, ref)


# -- end to end ------------------------------------------------------------------------------------


CASES = {
    "text-to-image": dict(size=(64, 64), steps=4),
    "text-to-image-non-square": dict(size=(48, 80), steps=2),
    "one-reference": dict(size=(64, 64), steps=3, references=[(80, 64)]),
    "two-references": dict(size=(48, 64), steps=2, references=[(96, 64), (64, 80)]),
}


@pytest.fixture(scope="session")
def diffusers_results(flux2_reference_pipe):
    """diffusers' output for each case, computed once for both ways of loading."""
    from tests.fixtures.flux2_reference import flux2_reference_image

    cache = {}

    def result(case, prompt, latents, references, steps, guidance, distilled=True):
        if case not in cache:
            pipe = flux2_reference_pipe
            pipe.register_to_config(is_distilled=distilled)
            try:
                cache[case] = flux2_reference_image(
                    pipe,
                    prompt,
                    latents,
                    image=references or None,
                    num_inference_steps=steps,
                    guidance_scale=guidance,
                )
            finally:
                pipe.register_to_config(is_distilled=True)
        return cache[case]

    return result


def final_latents(pipe, tokens: mx.array, rows: int, cols: int) -> np.ndarray:
    """Our final tokens as diffusers' `output_type="latent"`: denormalised, (1, 32, 2 rows, 2 cols)."""
    grid = tokens.astype(mx.float32) * pipe.vae.bn.std() + pipe.vae.bn.running_mean
    return np.array(pipe.vae.unpatchify(grid, rows, cols).transpose(0, 3, 1, 2))


@pytest.mark.parametrize("case", CASES)
def test_image_matches_diffusers(flux2_pipe, diffusers_results, case):
    c = CASES[case]
    (h, w), steps = c["size"], c["steps"]
    references = [picture(rw, rh, seed=i) for i, (rw, rh) in enumerate(c.get("references", []))]
    latents = noise((1, 32, h // 16, w // 16), seed=len(case))
    ref_lat, ref_img = diffusers_results(case, PROMPT, latents, references, steps, 1.0)
    kwargs = dict(width=w, height=h, steps=steps, guidance=1.0, latents=latents, reference_images=references)
    tokens, rows, cols = flux2_pipe.denoise(PROMPT, **kwargs)
    assert rel_err(final_latents(flux2_pipe, tokens, rows, cols), ref_lat) < 1e-4
    ours = np.asarray(flux2_pipe.decode(tokens, rows, cols))  # what generate() returns
    assert ours.shape == (h, w, 3)
    assert_images_close(ours, ref_img)


def test_base_model_guidance_matches_diffusers(flux2_pipe, diffusers_results):
    """A base (not distilled) model guides against the empty prompt when guidance > 1 (here with a
    reference image, which both branches see)."""
    latents = noise((1, 32, 4, 4), seed=21)
    references = [picture(64, 96, seed=5)]
    ref_lat, ref_img = diffusers_results("base-cfg", PROMPT, latents, references, 3, 4.0, distilled=False)
    flux2_pipe.distilled = False
    try:
        kwargs = dict(
            width=64, height=64, steps=3, guidance=4.0, latents=latents, reference_images=references
        )
        tokens, rows, cols = flux2_pipe.denoise(PROMPT, **kwargs)
        ours = np.asarray(flux2_pipe.decode(tokens, rows, cols))
    finally:
        flux2_pipe.distilled = True
    assert rel_err(final_latents(flux2_pipe, tokens, rows, cols), ref_lat) < 1e-4
    assert_images_close(ours, ref_img)


def test_distilled_model_ignores_guidance(flux2_pipe):
    latents = noise((1, 32, 2, 2), seed=3)
    kwargs = dict(width=32, height=32, steps=1, latents=latents)
    a = np.array(flux2_pipe.denoise(PROMPT, guidance=1.0, **kwargs)[0])
    b = np.array(flux2_pipe.denoise(PROMPT, guidance=5.0, **kwargs)[0])
    np.testing.assert_array_equal(a, b)
