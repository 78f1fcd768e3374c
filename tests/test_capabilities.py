"""A model's capabilities decide what the engine and `run` accept: the option a model lacks is refused
naming it (loaded or not, both APIs, and `run` before any engine starts), and the engine hands each
pipeline only what it takes.

The two profiles are the two families' own: Z-Image (guidance, negative prompt, start image, mask,
TeaCache) and FLUX.2 [klein] (guidance and reference images only). A third model is Z-Image with a
stale record, as an older version would have written it (no negative prompt, start image, mask or
TeaCache): capabilities come from this version's code, so it can do all that Z-Image can.
"""

import json
import re

import numpy as np
import pytest
from PIL import Image

from ollama_img.png_meta import read_png_text
from ollama_img.store import Store, write_bytes_blob
from tests.fixtures.engine_env import EngineEnv
from tests.fixtures.flux2_folder import TINY, build_flux2_folder

KLEIN = "klein:latest"
LACKING = ("teacache", "negative_prompt")


def narrow(store: Store, name: str, **off) -> None:
    """Rewrite the model's config blob so that its recorded capabilities lack `off`."""
    config = store.manifest(name).config.to_json()
    config["image_capabilities"].update(off)
    blob = write_bytes_blob(store.blobs_dir, json.dumps(config, indent=2).encode())
    path = store.manifest_path(name)
    manifest = json.loads(path.read_bytes())
    manifest["config"].update(digest=blob.digest, size=blob.size)
    path.write_text(json.dumps(manifest, indent=2))


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_folder):
    root = tmp_path_factory.mktemp("capabilities")
    klein = build_flux2_folder(root / "FLUX.2-klein", TINY)
    env = EngineEnv(root / "world")
    try:
        for name, folder in (("z-image", tiny_folder), ("stale", tiny_folder), ("klein", klein)):
            created = env.cli("create", name, "-f", str(folder))
            assert created.returncode == 0, created.stderr
        narrow(
            Store(env.env["OLLAMA_IMG_MODELS"]),
            "stale",
            negative_prompt=False,
            teacache=False,
            image_input=False,
            mask=False,
        )
        env.start_engine()
        yield env
    finally:
        env.close()


def generate(http, route, model="klein", **body):
    return http.post(route, json={"model": model, "prompt": "a fox", "stream": False, **body})


def refusals(http) -> list[tuple[int, str]]:
    out = []
    for field, value in (("teacache", 0.3), ("negative_prompt", "fog")):
        ollama = generate(http, "/api/generate", **{field: value, "width": 32, "height": 32})
        openai = generate(http, "/v1/images/generations", **{field: value, "size": "32x32"})
        out += [
            (ollama.status_code, ollama.json()["error"]),
            (openai.status_code, openai.json()["error"]["message"]),
        ]
    return out


EXPECTED = [(400, f"{KLEIN} does not support '{field}'") for field in LACKING for _ in range(2)]
FULL_OPTIONS = r"options\s+guidance, negative prompt, start image and strength, mask, TeaCache, LoRA\n"


def test_show_lists_each_profile(world):
    assert re.search(FULL_OPTIONS, world.cli("show", "z-image").stdout)
    klein = world.cli("show", "klein").stdout
    assert re.search(r"options\s+guidance, up to \d+ reference images\n", klein), klein


def test_an_option_the_model_lacks_is_a_400_naming_it_loaded_or_not(world):
    with world.http() as http:
        assert refusals(http) == EXPECTED  # the engine has not loaded it: checked against the family
        ok = generate(http, "/api/generate", width=32, height=48, steps=1, seed=4)
        assert ok.status_code == 200, ok.text
        assert http.get("/api/ps").json()["models"][0]["name"] == KLEIN
        assert refusals(http) == EXPECTED  # now against the loaded pipeline
    assert "Traceback" not in world.log_text()


def test_a_stale_record_does_not_take_capabilities_away(world):
    """The record says no negative prompt and no TeaCache; this version's Z-Image code has both, so
    `show` lists them and a request using them makes the same pixels as on the fresh model."""
    assert re.search(FULL_OPTIONS, world.cli("show", "stale").stdout)
    images = {}
    for model in ("stale", "z-image"):
        result = world.cli(
            "run",
            model,
            "a red fox",
            "--size",
            "32x48",
            "--steps",
            "2",
            "--seed",
            "5",
            "--negative",
            "fog",
        )
        assert result.returncode == 0, result.stderr
        path = result.stdout.strip().removeprefix("Image saved to: ")
        images[model] = (np.asarray(Image.open(path)), read_png_text(path))
    assert images["stale"][1]["negative_prompt"] == "fog"
    assert np.array_equal(images["stale"][0], images["z-image"][0])


def test_the_engine_passes_only_what_the_model_takes(world):
    """klein is handed no negative prompt or TeaCache (its recipe has neither), Z-Image its defaults."""
    recipes = {}
    for model in ("klein", "z-image"):
        result = world.cli("run", model, "a red fox", "--size", "32x32", "--steps", "1", "--seed", "5")
        assert result.returncode == 0, result.stderr
        recipes[model] = read_png_text(result.stdout.strip().removeprefix("Image saved to: "))
    assert not {"negative_prompt", "teacache"} & set(recipes["klein"]), recipes["klein"]
    assert float(recipes["z-image"]["guidance"]) == 0.0


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--teacache"], f"Error: {KLEIN} does not support --teacache"),
        (["--negative", "fog"], f"Error: {KLEIN} does not support --negative"),
        (["--width", "4112"], "Error: width must be at most 4096 for this model, got 4112"),
    ],
)
def test_run_names_the_flag_before_starting_an_engine(world, tmp_path, flags, message):
    other = EngineEnv(tmp_path, OLLAMA_IMG_MODELS=world.env["OLLAMA_IMG_MODELS"])  # no engine runs here
    try:
        result = other.cli("run", "klein", "a cat", *flags)
        assert (result.returncode, result.stderr) == (1, message + "\n")
        assert other.engine_pid() is None
    finally:
        other.close()
