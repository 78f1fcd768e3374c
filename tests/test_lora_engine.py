"""`run --lora` and the API's `loras` through the real engine: adapters go into the store and are taken
from there by digest only, each checked against the model before its job is queued; the image is the one
`load_pipeline(..., loras=...)` makes; one loaded model serves every adapter set."""

import base64
import io
import json
import re

import numpy as np
import pytest
from PIL import Image

from ollama_img.png_meta import read_png_text
from tests.conftest import file_sha256
from tests.fixtures.engine_env import side_world as side_of
from tests.fixtures.engine_env import world_with_model

pytest.importorskip("peft")
PROMPT = "a lighthouse on a cliff"
REQUEST = {
    "model": "z-image",
    "prompt": PROMPT,
    "width": 64,
    "height": 64,
    "steps": 2,
    "seed": 3,
    "stream": False,
}


@pytest.fixture(scope="module")
def world(tmp_path_factory, reference_folder):
    from tests.fixtures.flux2_folder import TINY, build_flux2_folder

    root = tmp_path_factory.mktemp("lora-e2e")
    for env in world_with_model(root, reference_folder):
        klein = build_flux2_folder(root / "FLUX.2-klein", TINY)
        env.create("klein", klein)
        yield env


@pytest.fixture(scope="module")
def adapter(reference_folder, tmp_path_factory):
    from tests.fixtures.lora_files import peft_lora

    return peft_lora(reference_folder, tmp_path_factory.mktemp("lora") / "style.safetensors", seed=5)


@pytest.fixture(scope="module")
def misfit(tmp_path_factory):
    """An adapter for a wider model: its first pair does not fit the tiny transformer."""
    from safetensors.numpy import save_file

    path = tmp_path_factory.mktemp("misfit") / "wide.safetensors"
    save_file(
        {
            "transformer.layers.0.attention.to_q.lora_A.weight": np.ones((4, 128), np.float32),
            "transformer.layers.0.attention.to_q.lora_B.weight": np.ones((128, 4), np.float32),
        },
        str(path),
    )
    return path


@pytest.fixture(scope="module")
def expected(reference_folder, adapter):
    """What load_pipeline makes for the request, with the adapter at 0.8 and without it."""
    from ollama_img import load_pipeline

    pipe = load_pipeline(reference_folder)
    kwargs = dict(width=64, height=64, steps=2, seed=3)
    return {
        "lora": np.asarray(pipe.generate(PROMPT, loras=[(adapter, 0.8)], **kwargs)),
        "base": np.asarray(pipe.generate(PROMPT, **kwargs)),
    }


def pixels(png: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(png)) as image:
        return np.asarray(image.convert("RGB"))


def close(a: np.ndarray, b: np.ndarray) -> bool:
    return np.abs(a.astype(int) - b.astype(int)).max() <= 1


def stored(world, path) -> str:
    from ollama_img.store import Store
    from ollama_img.store.adapters import put_adapter

    return put_adapter(Store(world.env["OLLAMA_IMG_MODELS"]), path).digest


def generate(http, **fields):
    return http.post("/api/generate", json={**REQUEST, **fields})


def test_run_lora_applies_the_file_and_the_png_names_it(world, adapter, expected):
    out = world.work / "lora.png"
    result = world.cli(
        "run", "z-image", PROMPT, "--lora", f"{adapter}:0.8", "--size", "64x64", "--steps", "2",
        "--seed", "3", "-o", str(out),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    digest = "sha256:" + file_sha256(adapter)
    assert json.loads(read_png_text(out)["loras"]) == [{"digest": digest, "scale": 0.8}]
    assert close(pixels(out.read_bytes()), expected["lora"])
    assert not close(expected["lora"], expected["base"])
    from ollama_img.store import Store

    assert Store(world.env["OLLAMA_IMG_MODELS"]).blob_path(digest).read_bytes() == adapter.read_bytes()


def test_a_model_made_with_a_modelfile_brings_its_adapters(world, adapter, expected):
    modelfile = world.work / "Modelfile"
    modelfile.write_text(f"FROM z-image\nADAPTER {adapter} 0.8\n")
    world.create("styled", modelfile)
    with world.http() as http:
        answer = generate(http, model="styled")
        assert answer.status_code == 200, answer.text
        assert close(pixels(base64.b64decode(answer.json()["images"][0])), expected["lora"])
        shown = http.post("/api/show", json={"model": "styled"}).json()
    assert shown["adapters"][0]["digest"] == "sha256:" + file_sha256(adapter)


def test_the_api_takes_adapters_by_digest_and_one_model_serves_every_set(world, adapter, expected):
    digest = stored(world, adapter)
    with world.http() as http:
        answer = generate(http, loras=[{"digest": digest, "scale": 0.8}])
        assert answer.status_code == 200, answer.text
        assert close(pixels(base64.b64decode(answer.json()["images"][0])), expected["lora"])
        plain = generate(http)
        assert close(pixels(base64.b64decode(plain.json()["images"][0])), expected["base"])
        again = generate(http, options={"loras": [{"digest": digest, "scale": 0.8}]})  # ollama's options
        assert close(pixels(base64.b64decode(again.json()["images"][0])), expected["lora"])
        openai = http.post(
            "/v1/images/generations",
            json={"model": "z-image", "prompt": PROMPT, "size": "64x64", "steps": 2, "seed": 3,
                  "loras": [{"digest": digest, "scale": 0.8}]},
        )  # fmt: skip
        assert openai.status_code == 200, openai.text
        assert close(pixels(base64.b64decode(openai.json()["data"][0]["b64_json"])), expected["lora"])
        loaded = http.get("/api/ps").json()["models"]
    assert "z-image:latest" in [m["name"] for m in loaded]  # one entry, whatever its adapters
    assert len([m for m in loaded if m["name"] == "z-image:latest"]) == 1


@pytest.mark.parametrize(
    "loras, message",
    [
        ([{"digest": "/home/me/style.safetensors"}], r"'loras': 'digest' must be the sha256 digest of an adapter in the store"),
        ([{"path": "/home/me/style.safetensors"}], r"'loras' has 'path': an adapter is named by its digest in the store only"),
        ([{"digest": "sha256:" + "0" * 64}], "is not in the store"),
        ("sha256:abc", r"'loras' must be a list"),
        ([{"digest": "sha256:" + "0" * 64, "scale": "high"}], r"'loras' 'scale' must be a number"),
    ],
)  # fmt: skip
def test_the_api_refuses_paths_unknown_digests_and_bad_values(world, loras, message):
    with world.http() as http:
        answer = generate(http, loras=loras)
        openai = http.post(
            "/v1/images/generations", json={"model": "z-image", "prompt": PROMPT, "loras": loras}
        )
    assert answer.status_code == 400 and re.search(message, answer.json()["error"]), answer.text
    assert openai.status_code == 400 and re.search(message, openai.json()["error"]["message"]), openai.text


def test_the_api_refuses_a_blob_that_is_not_a_fitting_adapter(world, misfit):
    from ollama_img.store import Store

    digest = stored(world, misfit)
    tensor = Store(world.env["OLLAMA_IMG_MODELS"]).manifest("z-image").layer("transformer/x_pad_token").digest
    with world.http() as http:
        wrong = generate(http, loras=[{"digest": digest}])
        not_adapter = generate(http, loras=[{"digest": tensor}])
        klein = http.post("/api/generate", json={**REQUEST, "model": "klein", "loras": [{"digest": digest}]})
    assert wrong.status_code == 400
    assert wrong.json()["error"] == (
        f"adapter {digest}: key 'transformer.layers.0.attention.to_q.lora_A.weight' has shape [4, 128], "
        "the layer takes 64 inputs"
    )
    assert not_adapter.status_code == 400 and "key 'data' is not a LoRA weight" in not_adapter.json()["error"]
    assert klein.status_code == 400 and klein.json()["error"] == "klein:latest does not support 'loras'"


@pytest.fixture
def side_world(tmp_path, world):
    yield from side_of(tmp_path, world)


def test_run_refuses_a_missing_misfit_or_unsupported_lora_before_anything_starts(side_world, misfit, adapter):
    cases = [
        (("z-image", "--lora", "missing.safetensors"), "Error: --lora missing.safetensors: no such file"),
        (("z-image", "--lora", f"{misfit}:0.5"), f"Error: adapter {misfit}: key 'transformer.layers.0.attention.to_q.lora_A.weight' has shape [4, 128], the layer takes 64 inputs"),
        (("klein", "--lora", str(adapter)), "Error: klein:latest does not support --lora"),
    ]  # fmt: skip
    for args, line in cases:
        result = side_world.cli("run", *args[:1], PROMPT, *args[1:])
        assert result.returncode == 1 and result.stderr.strip() == line, result.stderr
    assert side_world.engine_pid() is None
