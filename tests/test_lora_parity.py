"""LoRA parity with diffusers: the tiny float32 Z-Image folder diffusers wrote, adapters made with peft on
its transformer (and the same adapter in kohya's keys), loaded in diffusers with `load_lora_weights`
(and `set_adapters` with scales for two), the same initial latents: the same image, within 2/255 at
most and 0.2/255 on average (and the final latents within 1e-4 relative), for both ways of computing
adapters, from a folder and from the store.
"""

import numpy as np
import pytest

from ollama_img.models.lora_layers import MERGED, SIDE_PATH
from tests.test_parity import PROMPT, assert_images_close, noise, rel_err

torch = pytest.importorskip("torch")
pytest.importorskip("peft")

SIZE, STEPS = 64, 4
# diffusers loading a second adapter into one model warns that it does; that is what these tests do
pytestmark = pytest.mark.filterwarnings("ignore:Already found a `peft_config` attribute:UserWarning")


@pytest.fixture(scope="module")
def adapters(reference_folder, tmp_path_factory):
    """`a`: rank 4, alpha 8, w2 at alpha 2 (PEFT's alpha_pattern); `kohya`: the same in kohya's keys;
    `b`: rank 2 with rsLoRA, on attention and feed-forward only."""
    from tests.fixtures.lora_files import kohya_from_peft, peft_lora

    folder = tmp_path_factory.mktemp("loras")
    a = peft_lora(reference_folder, folder / "a.safetensors", alpha_pattern={"w2": 2.0}, seed=1)
    b = peft_lora(
        reference_folder,
        folder / "b.safetensors",
        rank=2,
        alpha=3.0,
        seed=2,
        strength=0.8,
        targets=r".*\.(to_q|to_v|to_out\.0|w1|w3)$",
    )
    from peft import LoraConfig  # noqa: F401  (the files above were made by it)

    return {"a": a, "kohya": kohya_from_peft(a, folder / "kohya.safetensors"), "b": b}


@pytest.fixture(scope="module")
def rslora_b(adapters, tmp_path_factory):
    """`b` again, its PEFT config saying rsLoRA (scale alpha / sqrt(r))."""
    import json

    from safetensors.torch import load_file, save_file

    from tests.fixtures.lora_files import peft_config

    config = {f"transformer.{k}": v for k, v in peft_config(adapters["b"]).items()}
    config["transformer.use_rslora"] = True
    path = tmp_path_factory.mktemp("rslora") / "b-rs.safetensors"
    save_file(
        load_file(str(adapters["b"])),
        str(path),
        metadata={"lora_adapter_metadata": json.dumps(config), "format": "pt"},
    )
    return path


def reference(folder, loras: list[tuple], latents):
    """diffusers' latents and image with these (file, scale) adapters loaded through its LoRA loader."""
    from tests.fixtures.reference import load_reference, reference_image

    pipe = load_reference(folder)
    names = []
    for i, (path, _) in enumerate(loras):
        names.append(f"adapter{i}")
        pipe.load_lora_weights(str(path), adapter_name=names[-1])
    if loras:
        pipe.set_adapters(names, adapter_weights=[scale for _, scale in loras])
    return reference_image(pipe, PROMPT, latents, num_inference_steps=STEPS, guidance_scale=0.0)


def ours(pipe, latents, **kwargs):
    options = dict(width=SIZE, height=SIZE, steps=STEPS, guidance=0.0, latents=latents, **kwargs)
    return np.array(pipe.denoise(PROMPT, **options)), np.asarray(pipe.generate(PROMPT, **options))


def check(ours_result, ref_result, base_image):
    (lat, image), (ref_lat, ref_image) = ours_result, ref_result
    assert rel_err(lat, ref_lat) < 1e-4
    assert_images_close(image, ref_image)
    changed = np.abs(ref_image.astype(int) - base_image.astype(int)).mean()
    assert changed > 10, (
        f"the adapters changed the image by only {changed:.1f}/255: the test would prove little"
    )


@pytest.fixture(scope="module")
def latents():
    return noise((1, 16, SIZE // 8, SIZE // 8), seed=21)


@pytest.fixture(scope="module")
def base_image(reference_folder, latents):
    return reference(reference_folder, [], latents)[1]


CASES = {
    "peft": [("a", 1.0)],
    "kohya": [("kohya", 0.7)],
    "two-adapters": [("a", 0.8), ("b", 0.5)],
    "kohya-and-peft": [("kohya", 0.6), ("b", 1.2)],
}


@pytest.mark.parametrize("strategy", [SIDE_PATH, MERGED])
@pytest.mark.parametrize("case", CASES)
def test_adapters_at_load_match_diffusers(reference_folder, adapters, latents, base_image, case, strategy):
    from ollama_img import load_pipeline

    loras = [(adapters[key], scale) for key, scale in CASES[case]]
    pipe = load_pipeline(reference_folder, loras=loras, lora_strategy=strategy)
    check(ours(pipe, latents), reference(reference_folder, loras, latents), base_image)


def test_rslora_scaling_matches_diffusers(reference_folder, rslora_b, latents, base_image):
    from ollama_img import load_pipeline

    pipe = load_pipeline(reference_folder, loras=[(rslora_b, 1.0)])
    check(ours(pipe, latents), reference(reference_folder, [(rslora_b, 1.0)], latents), base_image)


@pytest.mark.parametrize("strategy", [SIDE_PATH, MERGED])
def test_adapters_per_generation_are_swapped_in_and_out(
    mlx_pipe_plain, adapters, latents, base_image, strategy
):
    """One loaded pipeline, adapters asked per image: each image is the one diffusers makes with those
    adapters, and without them again the base's."""
    pipe = mlx_pipe_plain(strategy)
    folder = pipe.name
    for case in ("two-adapters", "peft"):
        loras = [(adapters[key], scale) for key, scale in CASES[case]]
        check(ours(pipe, latents, loras=loras), reference(folder, loras, latents), base_image)
    _, image = ours(pipe, latents)
    assert_images_close(image, base_image)


@pytest.fixture(scope="module")
def mlx_pipe_plain(reference_folder):
    from ollama_img import load_pipeline

    return lambda strategy: load_pipeline(reference_folder, lora_strategy=strategy)


def test_adapters_by_digest_on_a_store_model_match_diffusers(
    reference_folder, adapters, latents, base_image, tmp_path
):
    from ollama_img import load_pipeline
    from ollama_img.store import Store, import_folder, inspect_folder
    from ollama_img.store.adapters import put_adapter

    store = Store(tmp_path / "store")
    import_folder(store, "zimage-ref", inspect_folder(reference_folder))
    digests = [(put_adapter(store, adapters[key]).digest, scale) for key, scale in CASES["two-adapters"]]
    pipe = load_pipeline("zimage-ref", store=store, loras=digests)
    assert [a.digest for a in pipe.adapters] == [d for d, _ in digests]
    loras = [(adapters[key], scale) for key, scale in CASES["two-adapters"]]
    check(ours(pipe, latents), reference(reference_folder, loras, latents), base_image)


def test_a_model_made_with_a_modelfile_applies_its_adapters_from_the_store(
    reference_folder, adapters, latents, base_image, store, cli, tmp_path
):
    """ADAPTER lines become the model's own adapters: `load_pipeline(NAME)` applies them, in order, at
    their scales, and the image is diffusers' with the same adapters."""
    from ollama_img import load_pipeline
    from ollama_img.store import import_folder, inspect_folder

    import_folder(store, "zimage-ref", inspect_folder(reference_folder))
    modelfile = tmp_path / "Modelfile"
    modelfile.write_text(f"FROM zimage-ref\nADAPTER {adapters['kohya']} 0.6\nADAPTER {adapters['b']} 1.2\n")
    created = cli("create", "styled", "-f", str(modelfile))
    assert created.code == 0, created.err
    pipe = load_pipeline("styled", store=store)
    assert [(a.digest, a.scale) for a in pipe.adapters] == [
        (record.digest, record.scale) for record in store.manifest("styled").config.adapters
    ]
    loras = [(adapters[key], scale) for key, scale in CASES["kohya-and-peft"]]
    check(ours(pipe, latents), reference(reference_folder, loras, latents), base_image)
