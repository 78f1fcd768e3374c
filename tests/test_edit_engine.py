"""Editing through the real engine (`serve`, one process for the module) on the tiny model: the official
`openai` client's multipart `images.edit` (with and without a mask), the form Open WebUI builds
(`image[]`), JSON with base64 and data: URLs, SSE, `/api/generate` with `images`, `run --image` (and an
image path in an interactive line), and every bad input: a 4xx JSON error or one CLI line, with the
store, the engine and the working folder as they were.
"""

import base64
import hashlib
import io
import json
import os
import re
import signal

import httpx
import pytest
from PIL import Image

from ollama_img.png_meta import read_png_text
from tests.conftest import snapshot
from tests.fixtures.engine_env import EngineEnv
from tests.fixtures.flux2_folder import TINY, build_flux2_folder
from tests.fixtures.images import picture, png_bytes, png_claiming, rectangle_mask, truncated

openai = pytest.importorskip("openai")

START = picture(72, 56)  # not multiples of 16: an edit without a size makes 64x48
START_PNG = png_bytes(START)
MASK_PNG = png_bytes(rectangle_mask(72, 56))


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_folder):
    root = tmp_path_factory.mktemp("edit")
    klein = build_flux2_folder(root / "FLUX.2-klein", TINY)  # takes reference images, no start image or mask
    env = EngineEnv(root / "world")
    try:
        for name, folder in (("z-image", tiny_folder), ("klein", klein)):
            created = env.cli("create", name, "-f", str(folder))
            assert created.returncode == 0, created.stderr
        files = {
            "start.png": START_PNG,
            "mask.png": MASK_PNG,
            "square-mask.png": png_bytes(rectangle_mask(64, 64)),
            "notes.png": b"these are notes, not a picture\n",
            "truncated.png": truncated(START_PNG),
            "huge.png": png_claiming(6000, 5000),
        }
        for name, data in files.items():
            (env.work / name).write_bytes(data)
        serve, url = env.serve()
        env.url = url
        yield env
        serve.send_signal(signal.SIGINT)
        serve.communicate(timeout=30)
    finally:
        env.close()


@pytest.fixture(scope="module")
def client(world):
    return openai.OpenAI(base_url=f"{world.url}/v1", api_key="not-needed", max_retries=0)


def png_of(b64: str) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(b64)))
    assert image.format == "PNG"
    return image


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- the openai client, multipart ------------------------------------------------------------------


def test_openai_client_edit_makes_a_png_of_the_image_size(world, client):
    with open(world.work / "start.png", "rb") as image:
        result = client.images.edit(
            model="z-image", image=image, prompt="make it winter", extra_body={"steps": 2, "seed": 3}
        )
    edited = png_of(result.data[0].b64_json)
    assert edited.size == (64, 48)  # 72x56 rounded down to multiples of 16
    recipe = edited.text
    assert (recipe["image_sha256"], float(recipe["strength"]), recipe["seed"]) == (
        sha256(START_PNG),
        0.6,
        "3",
    )
    assert "mask_sha256" not in recipe
    with open(world.work / "start.png", "rb") as image:
        sized = client.images.edit(
            model="z-image", image=image, prompt="x", size="32x48", extra_body={"steps": 1}
        )
    assert png_of(sized.data[0].b64_json).size == (32, 48)


def test_openai_client_edit_with_a_mask(world, client):
    with open(world.work / "start.png", "rb") as image, open(world.work / "mask.png", "rb") as mask:
        result = client.images.edit(
            model="z-image",
            image=image,
            mask=mask,
            prompt="a window",
            n=2,
            extra_body={"steps": 2, "seed": 8},
        )
    first, second = (png_of(item.b64_json) for item in result.data)
    assert first.size == second.size == (64, 48)
    assert first.text["mask_sha256"] == sha256(MASK_PNG) and float(first.text["strength"]) == 1.0
    assert [first.text["seed"], second.text["seed"]] == ["8", "9"]
    assert first.tobytes() != second.tobytes()


def test_the_form_open_webui_builds(world):
    """Open WebUI posts multipart: text fields model/prompt/n/size/response_format, files as `image[]`."""
    fields = {
        "model": "z-image",
        "prompt": "a red door",
        "n": "1",
        "size": "64x64",
        "response_format": "b64_json",
    }
    files = [("image[]", ("3f1c.png", START_PNG, "image/png"))]
    answer = httpx.post(
        f"{world.url}/v1/images/edits", data={**fields, "steps": "1"}, files=files, timeout=60
    )
    assert answer.status_code == 200, answer.text
    (item,) = answer.json()["data"]
    assert png_of(item["b64_json"]).size == (64, 64) and answer.json()["created"] > 0
    two = httpx.post(f"{world.url}/v1/images/edits", data=fields, files=files * 2, timeout=60)
    assert two.status_code == 400
    assert two.json()["error"]["message"] == "z-image:latest takes at most 1 image, got 2"


def test_json_edits_with_base64_and_data_urls_and_sse(world):
    b64 = base64.b64encode(START_PNG).decode()
    common = {"model": "z-image", "prompt": "x", "steps": 2, "seed": 1, "size": "32x32"}
    plain = httpx.post(f"{world.url}/v1/images/edits", json={**common, "image": b64}, timeout=60)
    listed = httpx.post(
        f"{world.url}/v1/images/edits",
        json={**common, "images": [{"image_url": f"data:image/png;base64,{b64}"}], "response_format": "url"},
        timeout=60,
    )
    assert plain.status_code == listed.status_code == 200, (plain.text, listed.text)
    url = listed.json()["data"][0]["url"]
    assert url.startswith("data:image/png;base64,")
    assert png_of(url.partition(",")[2]).tobytes() == png_of(plain.json()["data"][0]["b64_json"]).tobytes()

    events, name = [], None
    body = {**common, "image": b64, "steps": 4, "strength": 0.5, "stream": True}
    with httpx.stream("POST", f"{world.url}/v1/images/edits", json=body, timeout=60) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith("event: "):
                name = line.removeprefix("event: ")
            elif line.startswith("data: "):
                events.append((name, json.loads(line.removeprefix("data: "))))
    assert [data for kind, data in events if kind == "progress"] == [{"step": k, "total": 2} for k in (1, 2)]
    kind, done = events[-1]
    assert kind == "done" and png_of(done["data"][0]["b64_json"]).size == (32, 32)


def test_api_generate_takes_images_mask_and_strength(world):
    body = {
        "model": "z-image",
        "prompt": "a boat",
        "images": [base64.b64encode(START_PNG).decode()],
        "mask": base64.b64encode(MASK_PNG).decode(),
        "strength": 0.75,
        "steps": 4,
        "stream": False,
    }
    answer = httpx.post(f"{world.url}/api/generate", json=body, timeout=60)
    assert answer.status_code == 200, answer.text
    final = answer.json()
    assert (final["width"], final["height"]) == (64, 48)
    recipe = png_of(final["images"][0]).text
    assert (recipe["image_sha256"], recipe["mask_sha256"]) == (sha256(START_PNG), sha256(MASK_PNG))
    assert float(recipe["strength"]) == 0.75


# -- run -------------------------------------------------------------------------------------------


def test_run_with_image_mask_and_strength(world):
    result = world.cli(
        "run", "z-image", "a snowy street", "--image", "start.png", "--mask", "mask.png",
        "--strength", "0.5", "--steps", "4", "--seed", "5",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines()[-2:] == ["Generating: step 1/2", "Generating: step 2/2"]
    path = result.stdout.strip().removeprefix("Image saved to: ")
    with Image.open(path) as image:
        assert image.size == (64, 48)
    recipe = read_png_text(path)
    assert (recipe["image_sha256"], recipe["mask_sha256"], float(recipe["strength"])) == (
        sha256(START_PNG),
        sha256(MASK_PNG),
        0.5,
    )
    again = world.cli(
        "run", "z-image", "a snowy street", "--image", "start.png", "--mask", "mask.png",
        "--strength", "0.5", "--steps", "4", "--seed", "5", "-o", "again.png",
    )  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert Image.open(world.work / "again.png").tobytes() == Image.open(path).tobytes()  # reproducible


def test_an_image_path_in_an_interactive_line_is_its_start_image(world):
    with world.terminal("run", "z-image", "--steps", "1", "-o", str(world.work)) as session:
        session.read_until(b">>> ")
        session.type(f"turn {world.work}/start.png into a painting")
        session.read_until(b"Image saved to: ")
        session.read_until(b">>> ")
        session.type("/bye")
        assert session.process.wait(timeout=30) == 0
        seen = session.seen
    assert f"Added image '{world.work}/start.png'".encode() in seen
    path = re.search(rb"Image saved to: (\S+\.png)", seen).group(1).decode()
    recipe = read_png_text(path)
    assert (recipe["prompt"], recipe["image_sha256"]) == ("turn into a painting", sha256(START_PNG))
    assert Image.open(path).size == (64, 48)


# -- bad input -------------------------------------------------------------------------------------

B64 = {name: base64.b64encode(data).decode() for name, data in [("start", START_PNG), ("mask", MASK_PNG)]}
BAD = [
    ({"images": [base64.b64encode(b"these are notes").decode()]}, "'images' is not a PNG, JPEG or WebP image"),
    ({"images": [base64.b64encode(truncated(START_PNG)).decode()]}, "'images' is damaged or truncated"),
    ({"images": [base64.b64encode(png_claiming(6000, 5000)).decode()]}, "'images' is too large: 6000x5000"),
    ({"images": [base64.b64encode(png_claiming(20000, 20000)).decode()]}, "'images' is too large"),
    ({"images": ["not base64!"]}, "'images' is not valid base64"),
    ({"images": ["https://example.com/cat.png"]}, "'images' is a URL"),
    ({"images": [B64["start"]], "mask": base64.b64encode(png_bytes(rectangle_mask(64, 64))).decode()},
     "the mask is 64x64 pixels but the image 72x56: they must be the same size"),
    ({"images": [B64["start"]], "strength": 0}, "'strength' must be more than 0 and at most 1, got 0"),
    ({"images": [B64["start"]], "strength": 1.5}, "'strength' must be more than 0 and at most 1, got 1.5"),
    ({"mask": B64["mask"]}, "'mask' needs an image to start from: send 'images' too"),
    ({"strength": 0.5}, "'strength' needs an image to start from: send 'images' too"),
    ({"images": [B64["start"]], "mask": B64["mask"], "model": "klein"}, "klein:latest does not support 'mask'"),
    ({"images": [B64["start"]], "strength": 0.5, "model": "klein"}, "klein:latest does not support 'strength'"),
    ({"images": "x"}, "'images' must be a list of images"),
]  # fmt: skip


@pytest.mark.parametrize(("extra", "message"), BAD, ids=[message[:40] for _, message in BAD])
def test_bad_input_is_a_400_and_changes_nothing(world, extra, message):
    before = snapshot(world.root / "models"), os.listdir(world.work)
    with world.http() as http:

        def state():  # what is loaded, and how many jobs ran and were queued
            log = world.log_text()
            return (
                [m["name"] for m in http.get("/api/ps").json()["models"]],
                log.count(" done: "),
                log.count("job "),
            )

        before_engine = state()
        body = {"model": "z-image", "prompt": "x", "steps": 1, "stream": False, **extra}
        answer = http.post("/api/generate", json=body)
        assert (answer.status_code, answer.json()["error"][: len(message)]) == (400, message), answer.text
        assert state() == before_engine
    assert (snapshot(world.root / "models"), os.listdir(world.work)) == before
    assert "Traceback" not in world.log_text()


EDITS_BAD = [
    ({"files": {"model": (None, "z-image"), "prompt": (None, "x")}}, 400, "missing 'image'"),
    ({"data": {"model": "klein", "prompt": "x"}, "files": [("image", ("a.png", START_PNG)), ("mask", ("m.png", MASK_PNG))]},
     400, "klein:latest does not support 'mask'"),
    ({"data": {"model": "z-image", "prompt": "x"}, "files": [("image", ("a.png", b"text"))]}, 400,
     "'image' is not a PNG, JPEG or WebP image"),
    ({"data": {"model": "z-image", "prompt": "x", "n": "many"}, "files": [("image", ("a.png", START_PNG))]},
     400, "'n' must be an integer, got \"many\""),
    ({"data": {"model": "z-image", "prompt": "x"}, "files": [("image[]", ("a.png", START_PNG))] * 18}, 400,
     "invalid multipart form: Too many files"),
    ({"data": {"model": "z-image", "prompt": "x" * (2**20 + 1)}, "files": [("image", ("a.png", START_PNG))]},
     400, "invalid multipart form"),
    ({"content": b"--x\r\nnot a form", "headers": {"content-type": "multipart/form-data; boundary=x"}}, 400,
     "invalid multipart form"),
    ({"content": b"0" * (64 * 2**20 + 1)}, 413, "request body too large"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("request_args", "status", "message"), EDITS_BAD, ids=[m[:40] for *_, m in EDITS_BAD]
)
def test_bad_edits_are_openai_errors(world, request_args, status, message):
    answer = httpx.post(f"{world.url}/v1/images/edits", timeout=60, **request_args)
    assert answer.status_code == status, answer.text
    assert answer.json()["error"]["message"].startswith(message), answer.text
    assert httpx.get(f"{world.url}/api/version").status_code == 200


RUN_BAD = [
    (["--image", "notes.png"], "--image notes.png is not a PNG, JPEG or WebP image"),
    (["--image", "truncated.png"], "--image truncated.png is damaged or truncated"),
    (["--image", "huge.png"], "--image huge.png is too large: 6000x5000 pixels"),
    (["--image", "missing.png"], "--image missing.png: no such file"),
    (["--image", "start.png", "--mask", "square-mask.png"], "the mask is 64x64 pixels but the image 72x56"),
    (["--image", "start.png", "--strength", "0"], "--strength must be more than 0 and at most 1, got 0.0"),
    (
        ["--image", "start.png", "--strength", "1.01"],
        "--strength must be more than 0 and at most 1, got 1.01",
    ),
    (["--mask", "mask.png"], "--mask needs an image to start from: send --image too"),
    (["--strength", "0.5"], "--strength needs an image to start from: send --image too"),
]


@pytest.mark.parametrize(("flags", "message"), RUN_BAD, ids=[m[:40] for _, m in RUN_BAD])
def test_bad_run_flags_are_one_line_before_anything_starts(world, tmp_path, flags, message):
    other = EngineEnv(tmp_path, OLLAMA_IMG_MODELS=world.env["OLLAMA_IMG_MODELS"])  # no engine runs here
    try:
        for name in ("notes.png", "truncated.png", "huge.png", "start.png", "mask.png", "square-mask.png"):
            (other.work / name).write_bytes((world.work / name).read_bytes())
        result = other.cli("run", "z-image", "a cat", *flags)
        assert (result.returncode, result.stdout) == (1, "")
        assert result.stderr.startswith(f"Error: {message}") and result.stderr.count("\n") == 1, result.stderr
        assert other.engine_pid() is None
    finally:
        other.close()


def test_run_refuses_a_mask_for_a_model_that_cannot_inpaint(world):
    result = world.cli("run", "klein", "a cat", "--image", "start.png", "--mask", "mask.png")
    assert (result.returncode, result.stderr) == (1, "Error: klein:latest does not support --mask\n")
