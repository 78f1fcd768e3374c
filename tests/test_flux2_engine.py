"""Both families in one real engine: Z-Image and FLUX.2 [klein] created from their folders, generated one
after the other (the second load evicts the first, least recently used), each refused what it lacks,
and `list` / `show` naming the family."""

from __future__ import annotations

import base64
import io
import re

import numpy as np
import pytest
from PIL import Image

from ollama_img.png_meta import read_png_text
from tests.fixtures.engine_env import EngineEnv
from tests.fixtures.flux2_folder import TINY, build_flux2_folder


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_folder):
    root = tmp_path_factory.mktemp("two-families")
    klein = build_flux2_folder(root / "FLUX.2-klein", TINY)
    env = EngineEnv(root / "world")
    try:
        for name, folder in (("z-image", tiny_folder), ("klein", klein)):
            created = env.cli("create", name, "-f", str(folder))
            assert created.returncode == 0, created.stderr
        yield env
    finally:
        env.close()


def loaded(world) -> list[str]:
    return [line.split()[0] for line in world.cli("ps").stdout.splitlines()[1:]]


def test_list_and_show_name_each_family(world):
    listing = world.cli("list").stdout
    assert re.search(r"^klein:latest\s+\w+\s+flux2-klein\s", listing, re.M), listing
    assert re.search(r"^z-image:latest\s+\w+\s+z-image\s", listing, re.M), listing
    shown = world.cli("show", "klein").stdout
    assert re.search(r"family\s+flux2-klein\n", shown), shown
    assert re.search(r"architecture\s+Flux2KleinPipeline\n", shown), shown


def test_one_engine_runs_both_families_and_evicts_the_least_recently_used(world, tmp_path):
    for name in ("z-image", "klein", "z-image"):
        out = tmp_path / f"{name}.png"
        result = world.cli(
            "run", name, "a red boat", "--size", "32x48", "--steps", "1", "--seed", "3", "-o", str(out)
        )
        assert result.returncode == 0, result.stderr
        with Image.open(out) as image:
            assert image.size == (32, 48) and np.asarray(image).std() > 0
        assert read_png_text(out)["model"] == f"{name}:latest"
        assert loaded(world) == [f"{name}:latest"]
    log = world.log_text()
    first_klein = log.index("loading klein:latest")
    assert log.index("unloaded z-image:latest") < first_klein
    assert first_klein < log.rindex("unloaded klein:latest") < log.rindex("loading z-image:latest")


def test_klein_uses_its_own_defaults(world):
    with world.http() as http:
        answer = http.post(
            "/api/generate",
            json={"model": "klein", "prompt": "a fox", "stream": False, "width": 32, "height": 32},
        )
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert (body["steps"], body["width"], body["height"]) == (4, 32, 32)
    with Image.open(io.BytesIO(base64.b64decode(body["images"][0]))) as image:
        assert image.size == (32, 32)


@pytest.mark.parametrize("field, value", [("teacache", 0.3), ("negative_prompt", "fog")])
def test_options_klein_lacks_are_400s_naming_them(world, field, value):
    with world.http() as http:
        ollama = http.post(
            "/api/generate", json={"model": "klein", "prompt": "a fox", "stream": False, field: value}
        )
        openai = http.post(
            "/v1/images/generations",
            json={"model": "klein", "prompt": "a fox", "size": "32x32", field: value},
        )
    assert (ollama.status_code, ollama.json()["error"]) == (400, f"klein:latest does not support '{field}'")
    assert openai.status_code == 400
    assert openai.json()["error"]["message"] == f"klein:latest does not support '{field}'"


def test_run_refuses_teacache_for_klein_before_starting_anything(world):
    result = world.cli("run", "klein", "a fox", "--teacache", "0.3")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == "Error: klein:latest does not support --teacache"
