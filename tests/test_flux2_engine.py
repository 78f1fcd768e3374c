"""Both families in one real engine: Z-Image and FLUX.2 [klein] created from their folders, generated one
after the other (the second load evicts the first, least recently used), each refused what it lacks,
`list` / `show` naming the family, and klein's reference images through `run --image`, `/api/generate`
`images` and `/v1/images/edits`."""

from __future__ import annotations

import base64
import hashlib
import io
import re

import numpy as np
import pytest
from PIL import Image

from ollama_img.png_meta import read_png_text
from tests.fixtures.engine_env import EngineEnv
from tests.fixtures.flux2_folder import TINY, build_flux2_folder
from tests.fixtures.images import picture, png_bytes


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


# -- reference images through the engine -------------------------------------------------------------

A_PNG = png_bytes(picture(80, 64, seed=1))  # the first reference sets the size left out: 80x64
B_PNG = png_bytes(picture(64, 96, seed=2))


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_run_takes_reference_images_and_records_them(world):
    (world.work / "a.png").write_bytes(A_PNG)
    (world.work / "b.png").write_bytes(B_PNG)
    result = world.cli(
        "run", "klein", "the two together", "--image", "a.png", "--image", "b.png", "--steps", "1"
    )
    assert result.returncode == 0, result.stderr
    path = result.stdout.strip().removeprefix("Image saved to: ")
    with Image.open(path) as image:
        assert image.size == (80, 64)
    expected = ",".join(hashlib.sha256(data).hexdigest() for data in (A_PNG, B_PNG))
    assert read_png_text(path)["image_sha256"] == expected


def test_both_apis_take_reference_images(world):
    body = {"model": "klein", "prompt": "x", "steps": 1, "seed": 4}
    with world.http() as http:
        ollama = http.post(
            "/api/generate", json={**body, "images": [b64(A_PNG), b64(B_PNG)], "stream": False}
        )
        files = [("image[]", ("a.png", A_PNG, "image/png")), ("image[]", ("b.png", B_PNG, "image/png"))]
        edit = http.post("/v1/images/edits", data={k: str(v) for k, v in body.items()}, files=files)
    assert ollama.status_code == 200, ollama.text
    assert (ollama.json()["width"], ollama.json()["height"]) == (80, 64)
    assert edit.status_code == 200, edit.text
    same = base64.b64decode(edit.json()["data"][0]["b64_json"])
    with (
        Image.open(io.BytesIO(same)) as a,
        Image.open(io.BytesIO(base64.b64decode(ollama.json()["images"][0]))) as b,
    ):
        assert a.tobytes() == b.tobytes()  # the same request through either API makes the same image


@pytest.mark.parametrize(
    "images, message",
    [
        ([b64(A_PNG)] * 11, "klein:latest takes at most 10 images, got 11"),
        ([b64(png_bytes(picture(40, 80)))], "reference image 1 is 40x80: both sides must be at least 64"),
    ],
)
def test_reference_images_klein_cannot_take_are_400s(world, images, message):
    with world.http() as http:
        answer = http.post(
            "/api/generate", json={"model": "klein", "prompt": "x", "images": images, "stream": False}
        )
    assert (answer.status_code, answer.json()["error"]) == (400, message)
