"""Numerical parity with diffusers' ZImagePipeline on tiny float32 folders that diffusers itself wrote.

Component tests hold each part to 1e-4 relative error; the end-to-end tests hold the final image to
2/255 at most and 0.2/255 on average (and the final latents to 1e-4 relative).
"""

import warnings

import mlx.core as mx
import numpy as np
import pytest

from tests.fixtures.pipeline_contract import check_on_step, check_seeds

torch = pytest.importorskip("torch")

PROMPT = "a cat playing piano under a golden sky"


def rel_err(ours, ref) -> float:
    ours, ref = np.asarray(ours, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    return float(np.abs(ours - ref).max() / (np.abs(ref).max() + 1e-12))


def noise(shape, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


# -- components ------------------------------------------------------------------------------------


def test_token_ids_match_transformers(mlx_pipe, reference_pipe):
    for prompt in (PROMPT, "", "日 月 火 — émoji 🐱 and  double  spaces\nnew line"):
        text = reference_pipe.tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}],
            tokenize=False,
            add_generation_prompt=True,
            enable_thinking=True,
        )
        assert mlx_pipe.tokenizer.render(prompt) == text
        ref_ids = reference_pipe.tokenizer(text, truncation=True, max_length=512).input_ids
        assert mlx_pipe.tokenizer.encode(prompt) == ref_ids


def test_long_prompt_is_truncated_to_512_tokens_with_a_warning(mlx_pipe, reference_pipe):
    from ollama_img.models.chat_tokenizer import PromptTruncatedWarning

    prompt = " ".join(["cinematic portrait of a red horse"] * 200)
    with pytest.warns(PromptTruncatedWarning, match="only the first 512"):
        ids = mlx_pipe.tokenizer.encode(prompt)
    text = mlx_pipe.tokenizer.render(prompt)
    assert ids == reference_pipe.tokenizer(text, truncation=True, max_length=512).input_ids
    assert len(ids) == 512


def test_text_encoder_embedding_matches_hidden_states_minus_2(mlx_pipe, reference_pipe):
    with torch.no_grad():
        (ref,) = reference_pipe.encode_prompt(PROMPT, do_classifier_free_guidance=False)[0]
    ours = np.array(mlx_pipe.encode_prompt(PROMPT)[0])
    assert ours.shape == tuple(ref.shape)
    assert rel_err(ours, ref.numpy()) < 1e-4


@pytest.mark.parametrize("size", [(64, 64), (48, 80)])
def test_transformer_forward_matches(mlx_pipe, reference_pipe, size):
    h, w = size[0] // 8, size[1] // 8
    latents = noise((1, 16, h, w), seed=1)
    cap = noise((13, mlx_pipe.transformer.config.cap_feat_dim), seed=2)
    t = np.array([0.37], dtype=np.float32)
    with torch.no_grad():
        ref = reference_pipe.transformer(
            [torch.from_numpy(latents[0][:, None])],
            torch.from_numpy(t),
            [torch.from_numpy(cap)],
            return_dict=False,
        )[0][0][:, 0]
    caption = mlx_pipe.transformer.encode_caption(mx.array(cap[None]), [cap.shape[0]])
    ours = np.array(mlx_pipe.transformer(mx.array(latents), mx.array(t), caption)[0])
    assert rel_err(ours, ref.numpy()) < 1e-4


def test_vae_decode_and_encode_match(mlx_pipe, reference_pipe):
    vae = reference_pipe.vae
    latents = noise((1, 16, 8, 12), seed=3)
    with torch.no_grad():
        z = torch.from_numpy(latents) / vae.config.scaling_factor + vae.config.shift_factor
        ref = vae.decode(z, return_dict=False)[0].permute(0, 2, 3, 1).numpy()
    ours = np.array(mlx_pipe.vae.decode(mx.array(latents)))
    assert rel_err(ours, ref) < 1e-4

    image = np.tanh(noise((1, 64, 96, 3), seed=4))
    with torch.no_grad():
        moments = vae.encode(torch.from_numpy(image).permute(0, 3, 1, 2)).latent_dist.mean
        ref_z = ((moments - vae.config.shift_factor) * vae.config.scaling_factor).numpy()
    ours_z = np.array(mlx_pipe.vae.encode(mx.array(image)))
    assert rel_err(ours_z, ref_z) < 1e-4


@pytest.mark.parametrize("dynamic", [False, True])
def test_sigmas_match_the_scheduler_bit_for_bit(reference_pipe, dynamic):
    from diffusers import FlowMatchEulerDiscreteScheduler
    from diffusers.pipelines.z_image.pipeline_z_image import calculate_shift, get_default_z_image_sigmas

    from ollama_img.models import flow_match

    config = dict(reference_pipe.scheduler.config)
    config["use_dynamic_shifting"] = dynamic
    ref_sched = FlowMatchEulerDiscreteScheduler.from_config(config)
    for steps in (1, 2, 4, 8, 9, 30, 50):
        seq = 4096 if dynamic else 64
        mu = calculate_shift(seq, 256, 4096, 0.5, 1.15)
        ref_sched.set_timesteps(sigmas=get_default_z_image_sigmas(steps), mu=mu)
        ours = flow_match.sigmas(config, steps, seq)
        np.testing.assert_array_equal(ours, ref_sched.sigmas.numpy())
        ref_times = ((1000 - ref_sched.timesteps) / 1000).numpy()
        np.testing.assert_array_equal(flow_match.model_times(ours), ref_times)


# -- end to end ------------------------------------------------------------------------------------


def assert_images_close(ours: np.ndarray, ref: np.ndarray):
    diff = np.abs(ours.astype(np.int16) - ref.astype(np.int16))
    assert diff.max() <= 2, f"max abs difference {diff.max()}/255"
    assert diff.mean() <= 0.2, f"mean abs difference {diff.mean():.3f}/255"
    assert ref.std() > 20, "the reference image is nearly flat: the comparison would prove little"


CASES = {
    "turbo-4-steps": dict(size=(64, 64), steps=4, guidance=0.0),
    "one-step": dict(size=(64, 64), steps=1, guidance=0.0),
    "non-square": dict(size=(48, 96), steps=4, guidance=0.0),
    "cfg-negative": dict(size=(64, 64), steps=4, guidance=3.5, negative_prompt="blurry, low quality"),
    "cfg-empty-negative": dict(size=(64, 48), steps=2, guidance=2.0),
    # a prompt of more than 32 tokens pads to 64 while the negative pads to 32: two passes, not one batch
    "cfg-unequal-captions": dict(size=(32, 32), steps=2, guidance=1.5, prompt=" ".join([PROMPT] * 5)),
}


@pytest.mark.parametrize("case", CASES)
def test_image_matches_diffusers(mlx_pipe, reference_pipe, case):
    from tests.fixtures.reference import reference_image

    c = dict(CASES[case])
    (h, w), steps, guidance = c.pop("size"), c.pop("steps"), c.pop("guidance")
    prompt = c.pop("prompt", PROMPT)
    latents = noise((1, 16, h // 8, w // 8), seed=hash(case) % 1000)
    ref_lat, ref_img = reference_image(
        reference_pipe, prompt, latents, num_inference_steps=steps, guidance_scale=guidance, **c
    )
    kwargs = dict(width=w, height=h, steps=steps, guidance=guidance, latents=latents, **c)
    ours_lat = np.array(mlx_pipe.denoise(prompt, **kwargs))
    assert rel_err(ours_lat, ref_lat) < 1e-4
    ours_img = np.asarray(mlx_pipe.generate(prompt, **kwargs))
    assert ours_img.shape == (h, w, 3)
    assert_images_close(ours_img, ref_img)


def test_cfg_normalization_and_truncation_match(mlx_pipe, reference_pipe):
    from tests.fixtures.reference import reference_image

    latents = noise((1, 16, 8, 8), seed=11)
    opts = dict(num_inference_steps=4, guidance_scale=4.0, cfg_normalization=1.0, cfg_truncation=0.5)
    ref_lat, _ = reference_image(reference_pipe, PROMPT, latents, negative_prompt="ugly", **opts)
    ours = mlx_pipe.denoise(
        PROMPT,
        width=64,
        height=64,
        steps=4,
        guidance=4.0,
        negative_prompt="ugly",
        latents=latents,
        cfg_normalization=1.0,
        cfg_truncation=0.5,
    )
    assert rel_err(np.array(ours), ref_lat) < 1e-4


def test_on_step_is_called_after_every_step_and_can_stop_the_run(mlx_pipe):
    check_on_step(mlx_pipe, PROMPT, width=32, height=32)


def test_same_seed_same_image_other_seed_other_image(mlx_pipe):
    check_seeds(mlx_pipe, PROMPT, steps=2, width=32, height=32)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(width=60, height=64), "width must be a positive multiple of 16"),
        (dict(width=64, height=0), "height must be a positive multiple of 16"),
        (dict(width=-16, height=64), "width must be a positive multiple of 16"),
        (dict(width=64, height=64 * 1024), "height must be at most 8192"),
        (dict(width=64, height=64, steps=0), "steps must be a whole number >= 1"),
        (dict(width=64, height=64, steps=2.5), "steps must be a whole number >= 1"),
    ],
)
def test_invalid_requests_raise_a_clear_value_error(mlx_pipe, kwargs, message):
    with pytest.raises(ValueError, match=message):
        mlx_pipe.generate(PROMPT, **kwargs)


def test_latents_of_the_wrong_shape_are_refused(mlx_pipe):
    with pytest.raises(ValueError, match=r"latents must have shape \(1, 16, 8, 8\)"):
        mlx_pipe.generate(PROMPT, width=64, height=64, latents=noise((1, 16, 4, 4)))


def test_no_warning_for_a_normal_prompt(mlx_pipe):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mlx_pipe.tokenizer.encode(PROMPT)


def test_compiled_steps_match_eager_steps(mlx_pipe):
    """The mx.compile'd step (used on GPUs) computes what the eager step computes."""
    kwargs = dict(width=32, height=48, steps=2, guidance=2.0, negative_prompt="dark", seed=4)
    eager = np.array(mlx_pipe.denoise(PROMPT, **kwargs))
    mlx_pipe.compile = True
    try:
        compiled = np.array(mlx_pipe.denoise(PROMPT, **kwargs))
    finally:
        mlx_pipe.compile = False
    assert rel_err(compiled, eager) < 1e-5
