"""FLUX.2 [klein]'s pipeline beyond parity: its defaults, what it refuses, its callbacks and seeds, the
compiled step, the folder builder the benchmarks use, and quantization at import."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from tests.fixtures.images import picture
from tests.fixtures.pipeline_contract import check_on_step, check_seeds
from tests.test_flux2_parity import PROMPT, noise, rel_err

pytest.importorskip("torch")


@pytest.fixture(scope="session")
def pipe(flux2_reference_folder):
    from ollama_img import load_pipeline

    return load_pipeline(flux2_reference_folder)


def test_a_distilled_model_defaults_to_4_steps_at_guidance_1(pipe):
    assert pipe.distilled
    assert (pipe.defaults.width, pipe.defaults.height, pipe.defaults.steps, pipe.defaults.guidance) == (
        1024,
        1024,
        4,
        1.0,
    )
    steps = []
    pipe.generate(PROMPT, width=32, height=32, seed=1, on_step=lambda k, n: steps.append(n))
    assert set(steps) == {4}


def test_warm_up_leaves_the_next_image_unchanged(pipe):
    assert pipe.benefits_from_warm_up is False  # the CPU has no kernels to compile
    recipe = dict(width=48, height=32, steps=1, seed=11, reference_images=[picture(64, 64, seed=1)])
    before = np.asarray(pipe.generate(PROMPT, **recipe))
    pipe.warm_up(width=32, height=32)
    assert np.array_equal(np.asarray(pipe.generate(PROMPT, **recipe)), before)


def test_on_step_is_called_after_every_step_and_can_stop_the_run(pipe):
    check_on_step(pipe, PROMPT, width=32, height=32)


def test_same_seed_same_image_other_seed_other_image(pipe):
    check_seeds(pipe, PROMPT, steps=1, width=32, height=48)


def test_the_size_left_out_comes_from_the_first_reference_image(pipe):
    references = [picture(100, 70, seed=1), picture(64, 64, seed=2)]
    tokens, rows, cols = pipe.denoise(PROMPT, steps=1, seed=3, reference_images=references)
    assert (rows, cols) == (64 // 16, 96 // 16)  # 100x70 floored to multiples of 16
    _, rows, cols = pipe.denoise(PROMPT, width=32, steps=1, seed=3, reference_images=references)
    assert (rows, cols) == (4, 2)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(width=60, height=64), "width must be a positive multiple of 16"),
        (dict(width=64, height=0), "height must be a positive multiple of 16"),
        (dict(width=-16, height=64), "width must be a positive multiple of 16"),
        (dict(width=4112, height=64), "width must be at most 4096"),
        (dict(width=4096, height=2048), "at most 4194304 pixels"),
        (dict(width=64, height=64, steps=0), "steps must be a whole number >= 1"),
        (dict(width=64, height=64, steps=2.5), "steps must be a whole number >= 1"),
        (dict(width=64, height=64, latents=noise((1, 32, 2, 2))), r"latents must have shape \(1, 32, 4, 4\)"),
        (dict(reference_images=[picture(40, 80, 1)]), "reference image 1 is 40x80: both sides"),
        (
            dict(reference_images=[picture(64, 64, 1), picture(600, 64, 2)]),
            "reference image 2 is 600x64: the aspect",
        ),
        (dict(reference_images=[np.zeros((64, 64, 3))]), "reference image 1 must be a PIL image"),
        (dict(reference_images=[picture(64, 64, 1)] * 11), "at most 10 reference images, got 11"),
    ],
)
def test_invalid_requests_raise_a_clear_value_error(pipe, kwargs, message):
    with pytest.raises(ValueError, match=message):
        pipe.generate(PROMPT, **{"steps": 1, **kwargs})


def test_compiled_steps_match_eager_steps(pipe):
    """The mx.compile'd step (used on Metal) computes what the eager step computes, with references too."""
    kwargs = dict(width=32, height=48, steps=2, seed=4, reference_images=[picture(64, 80, seed=9)])
    eager = np.array(pipe.denoise(PROMPT, **kwargs)[0])
    pipe.compile = True
    try:
        compiled = np.array(pipe.denoise(PROMPT, **kwargs)[0])
    finally:
        pipe.compile = False
    assert rel_err(compiled, eager) < 1e-5


def test_the_benchmark_folder_builder_writes_what_diffusers_loads(tmp_path):
    """tests/fixtures/flux2_folder.py (bench/gpu_flux2.py's full-size folders): every tensor diffusers'
    Flux2KleinPipeline has, and no other; ollama-img loads it and generates."""
    import torch
    from diffusers import Flux2KleinPipeline
    from safetensors.torch import load_file

    from ollama_img import load_pipeline
    from tests.fixtures.flux2_folder import TINY, build_flux2_folder

    folder = build_flux2_folder(tmp_path / "klein", TINY, dtype="float32", text_encoder_shards=2)
    ref = Flux2KleinPipeline.from_pretrained(folder, dtype=torch.float32)
    assert ref.config.is_distilled
    for component in ("transformer", "text_encoder", "vae"):
        on_disk = {}
        for f in (folder / component).glob("*.safetensors"):
            on_disk.update(load_file(f))
        expected = set(getattr(ref, component).state_dict()) - {"bn.num_batches_tracked", "lm_head.weight"}
        assert set(on_disk) == expected, component
    image = load_pipeline(folder).generate(PROMPT, width=32, height=32, steps=1, seed=0)
    assert isinstance(image, Image.Image) and np.asarray(image).std() > 0


def test_quantized_import_quantizes_the_rule_s_weights_and_generates(flux2_reference_folder, tmp_path):
    from ollama_img import load_pipeline
    from ollama_img.quantization import parse_quant_type
    from ollama_img.store import Store, import_folder, inspect_folder

    store = Store(tmp_path / "store")
    import_folder(
        store, "klein-fp8", inspect_folder(flux2_reference_folder), quantize=parse_quant_type("fp8")
    )
    record = store.manifest("klein-fp8").config.quantization
    # every block Linear (double blocks: 8 attention + 4 feed-forward, single blocks: 2); of the text
    # encoder's, only down_proj has an input size (32) that is a multiple of the group size
    assert record.tensors == {"text_encoder": 28, "transformer": 2 * 12 + 2 * 2}
    quantized = load_pipeline("klein-fp8", store=store)
    plain = load_pipeline(flux2_reference_folder)
    latents = noise((1, 32, 2, 2), seed=8)
    a = np.array(quantized.denoise(PROMPT, width=32, height=32, steps=2, latents=latents)[0])
    b = np.array(plain.denoise(PROMPT, width=32, height=32, steps=2, latents=latents)[0])
    assert 0 < rel_err(a, b) < 0.05
