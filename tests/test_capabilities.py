"""A model's capabilities decide what the engine and `run` accept: the option a model lacks is refused
naming it (loaded or not, both APIs, and `run` before any engine starts), and the engine hands the
pipeline only what the model takes.

The second capability profile is a Z-Image model whose record lists no guidance, no negative prompt,
no start image or mask and no TeaCache, as a model recorded that way (another version, a Modelfile) would be: the real
store, engine and pipeline, one config blob rewritten.
"""

import json
import re

import numpy as np
import pytest
from PIL import Image

from ollama_img.png_meta import read_png_text
from ollama_img.store import Store, write_bytes_blob
from tests.fixtures.engine_env import EngineEnv

PLAIN = "plain:latest"


def narrow(store: Store, name: str, **off) -> None:
    """Rewrite the model's config blob so that its capabilities lack `off`."""
    config = store.manifest(name).config.to_json()
    config["image_capabilities"].update(off)
    blob = write_bytes_blob(store.blobs_dir, json.dumps(config, indent=2).encode())
    path = store.manifest_path(name)
    manifest = json.loads(path.read_bytes())
    manifest["config"].update(digest=blob.digest, size=blob.size)
    path.write_text(json.dumps(manifest, indent=2))


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_folder):
    env = EngineEnv(tmp_path_factory.mktemp("capabilities"))
    try:
        for name in ("z-image", "plain"):
            created = env.cli("create", name, "-f", str(tiny_folder))
            assert created.returncode == 0, created.stderr
        narrow(
            Store(env.env["OLLAMA_IMG_MODELS"]),
            "plain",
            guidance=False,
            negative_prompt=False,
            teacache=False,
            image_input=False,
            mask=False,
        )
        env.start_engine()
        yield env
    finally:
        env.close()


def generate(http, route, **body):
    return http.post(route, json={"model": "plain", "prompt": "a fox", "stream": False, **body})


def refusals(http) -> list[tuple[int, str]]:
    out = []
    for field, value in (("teacache", 0.3), ("negative_prompt", "fog"), ("guidance", 2.0)):
        ollama = generate(http, "/api/generate", **{field: value, "width": 32, "height": 32})
        openai = generate(http, "/v1/images/generations", **{field: value, "size": "32x32"})
        out += [
            (ollama.status_code, ollama.json()["error"]),
            (openai.status_code, openai.json()["error"]["message"]),
        ]
    return out


EXPECTED = [
    (400, f"{PLAIN} does not support '{field}'")
    for field in ("teacache", "negative_prompt", "guidance")
    for _ in range(2)
]


def test_show_lists_each_profile(world):
    assert re.search(r"options\s+none\n", world.cli("show", "plain").stdout)
    assert re.search(
        r"options\s+guidance, negative prompt, start image and strength, mask, TeaCache, LoRA\n",
        world.cli("show", "z-image").stdout,
    )


def test_an_option_the_model_lacks_is_a_400_naming_it_loaded_or_not(world):
    with world.http() as http:
        assert refusals(http) == EXPECTED  # the engine has not loaded it: checked against its record
        ok = generate(http, "/api/generate", width=32, height=48, steps=2, seed=4)
        assert ok.status_code == 200, ok.text
        assert http.get("/api/ps").json()["models"][0]["name"] == PLAIN
        assert refusals(http) == EXPECTED  # now against the loaded pipeline
    assert "Traceback" not in world.log_text()


def test_the_engine_passes_only_what_the_model_takes(world):
    """The plain model gets no guidance (its record has none): no guidance in its recipe, and the
    pipeline's own default makes the same pixels as the full model's default."""
    images = {}
    for model in ("plain", "z-image"):
        result = world.cli("run", model, "a red fox", "--size", "32x48", "--steps", "2", "--seed", "5")
        assert result.returncode == 0, result.stderr
        path = result.stdout.strip().removeprefix("Image saved to: ")
        images[model] = (np.asarray(Image.open(path)), read_png_text(path))
    assert "guidance" not in images["plain"][1] and float(images["z-image"][1]["guidance"]) == 0.0
    assert np.array_equal(images["plain"][0], images["z-image"][0])


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--teacache"], "Error: plain:latest does not support --teacache"),
        (["--negative", "fog"], "Error: plain:latest does not support --negative"),
        (["--guidance", "1.5"], "Error: plain:latest does not support --guidance"),
        (["--width", "8208"], "Error: width must be at most 8192 for this model, got 8208"),
    ],
)
def test_run_names_the_flag_before_starting_an_engine(world, tmp_path, flags, message):
    other = EngineEnv(tmp_path, OLLAMA_IMG_MODELS=world.env["OLLAMA_IMG_MODELS"])  # no engine runs here
    try:
        result = other.cli("run", "plain", "a cat", *flags)
        assert (result.returncode, result.stderr) == (1, message + "\n")
        assert other.engine_pid() is None
    finally:
        other.close()
