"""`run`, `ps`, `stop`, `serve` and both HTTP APIs end to end: the real CLI, a real engine process, the
store, and the MLX pipeline on the tiny model (64×64 or smaller, few steps, so each image takes ~0.1 s).

The module shares one engine (spawned by the first `run`); tests that kill or need their own engine
make their own world next to the same store.
"""

import asyncio
import base64
import io
import json
import os
import re
import signal
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from PIL import Image

from ollama_img.png_meta import read_png_text
from tests.fixtures.engine_env import EngineEnv, _alive, world_with_model
from tests.fixtures.engine_env import side_world as side_of

MODEL = "z-image:latest"
SAVED = re.compile(r"^Image saved to: (.+)$", re.M)


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_folder):
    yield from world_with_model(tmp_path_factory.mktemp("e2e"), tiny_folder)


@pytest.fixture
def side_world(tmp_path, world):
    """Another user's world (own runtime dir, so its own engine) sharing the module's store."""
    yield from side_of(tmp_path, world)


def manifest_digest(world) -> str:
    with world.http() as http:
        return http.post("/api/show", json={"model": "z-image"}).json()["digest"]


def saved_paths(result) -> list[str]:
    return SAVED.findall(result.stdout)


def pngs_in(folder) -> set[str]:
    return {p.name for p in folder.glob("*.png")}


# -- run ---------------------------------------------------------------------------------------------


def test_run_starts_the_engine_and_saves_a_png_with_its_recipe(world):
    assert world.engine_pid() is None
    result = world.cli(
        "run", "z-image", "a red fox", "--size", "64x48", "--steps", "2", "--seed", "7", "--negative", "fog"
    )
    assert result.returncode == 0, result.stderr
    (path,) = saved_paths(result)
    assert os.path.dirname(path) == str(world.work)
    assert re.fullmatch(r"z-image-\d{8}-\d{6}-7\.png", os.path.basename(path))
    # not a terminal: plain progress lines on stderr, nothing else
    assert result.stderr.splitlines() == [f"Loading {MODEL}", "Generating: step 1/2", "Generating: step 2/2"]
    with Image.open(path) as image:
        assert image.size == (64, 48) and image.mode == "RGB"
    text = read_png_text(path)
    assert (text["prompt"], text["negative_prompt"], text["seed"], text["steps"]) == (
        "a red fox",
        "fog",
        "7",
        "2",
    )
    assert (text["size"], text["model"], float(text["guidance"])) == ("64x48", MODEL, 0.0)
    assert text["model_digest"] == manifest_digest(world)
    assert world.engine_pid() is not None
    assert world.log_text().count(f"loading {MODEL}") == 1


def test_a_second_run_reuses_the_loaded_model(world):
    pid = world.engine_pid()
    result = world.cli(
        "run", "z-image", "a red fox", "--size", "64x48", "--steps", "2", "--seed", "7", "--format", "json"
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["durations"]["load"] == 0
    assert summary["seeds"] == [7] and summary["model"] == MODEL
    assert (summary["width"], summary["height"], summary["steps"]) == (64, 48, 2)
    assert "Loading" not in result.stderr
    assert world.log_text().count(f"loading {MODEL}") == 1
    assert world.engine_pid() == pid
    # same seed, same recipe: the same pixels as the first image
    first = [p for p in world.work.glob("z-image-*-7.png") if str(p) != summary["paths"][0]][0]
    assert Image.open(first).tobytes() == Image.open(summary["paths"][0]).tobytes()


def test_teacache_flag_reaches_the_pipeline_and_the_recipe(world):
    """--teacache 0 is the uncached image; a loose threshold skips passes (another image); bare uses 0.4."""

    def image(*flags):
        result = world.cli(
            "run", "z-image", "a red fox", "--size", "64x64", "--steps", "9", "--seed", "3", *flags
        )
        assert result.returncode == 0, result.stderr
        (path,) = saved_paths(result)
        return Image.open(path).tobytes(), read_png_text(path)

    plain, plain_text = image()
    zero, zero_text = image("--teacache", "0")
    loose, loose_text = image("--teacache", "30")
    _, default_text = image("--teacache")
    assert "teacache" not in plain_text and float(zero_text["teacache"]) == 0.0
    assert zero == plain
    assert loose != plain and float(loose_text["teacache"]) == 30.0
    assert float(default_text["teacache"]) == 0.4


def test_n_images_use_consecutive_seeds(world):
    out = world.work / "many.png"
    result = world.cli(
        "run",
        "z-image",
        "waves",
        "--size",
        "32x32",
        "--steps",
        "1",
        "--seed",
        "40",
        "-n",
        "2",
        "-o",
        str(out),
    )
    assert result.returncode == 0, result.stderr
    paths = saved_paths(result)
    assert [os.path.basename(p) for p in paths] == ["many-1.png", "many-2.png"]
    assert [read_png_text(p)["seed"] for p in paths] == ["40", "41"]
    assert Image.open(paths[0]).tobytes() != Image.open(paths[1]).tobytes()


def test_prompt_from_stdin_and_png_bytes_on_stdout(world):
    before = pngs_in(world.work)
    result = world.cli(
        "run", "z-image", "--size", "32x32", "--steps", "1", "-o", "-", input=b"a piped prompt\n"
    )
    assert result.returncode == 0, result.stderr
    image = Image.open(io.BytesIO(result.stdout))
    assert image.format == "PNG" and image.size == (32, 32)
    assert read_png_text(result.stdout)["prompt"] == "a piped prompt"
    assert b"Image saved" not in result.stderr and b"Generating: step 1/1" in result.stderr
    assert pngs_in(world.work) == before


def test_ps_lists_the_model_and_stop_unloads_it(world):
    result = world.cli("ps")
    assert result.returncode == 0, result.stderr
    header, row = result.stdout.splitlines()
    assert header.split() == ["NAME", "ID", "SIZE", "PROCESSOR", "UNTIL"]
    assert row.split()[:2] == [MODEL, manifest_digest(world).removeprefix("sha256:")[:12]]
    assert "100% CPU" in row and row.endswith("minutes from now")
    stopped = world.cli("stop", "z-image")
    assert (stopped.returncode, stopped.stdout, stopped.stderr) == (0, "", "")
    assert world.cli("ps").stdout.split() == ["NAME", "ID", "SIZE", "PROCESSOR", "UNTIL"]
    assert f"unloaded {MODEL}" in world.log_text()
    again = world.cli("stop", "z-image")  # not loaded: nothing to do, not an error
    assert again.returncode == 0, again.stderr


def test_keepalive_forever_shows_in_ps(world):
    result = world.cli("run", "z-image", "kept", "--size", "32x32", "--steps", "1", "--keepalive", "-1")
    assert result.returncode == 0, result.stderr
    (row,) = world.cli("ps").stdout.splitlines()[1:]
    assert row.startswith(MODEL) and row.endswith("Forever")
    assert world.cli("stop", "z-image").returncode == 0
    assert world.cli("ps").stdout.splitlines()[1:] == []


def test_stop_with_no_engine_checks_the_name_and_starts_nothing(side_world):
    assert side_world.cli("stop", "z-image").returncode == 0
    unknown = side_world.cli("stop", "nope")
    assert unknown.returncode == 1 and unknown.stderr.startswith("Error: ") and "nope" in unknown.stderr
    assert side_world.engine_pid() is None and not side_world.socket.exists()


def test_two_concurrent_runs_both_finish(world):
    first = world.popen("run", "z-image", "slow one", "--size", "64x64", "--steps", "150", text=True)
    for line in first.stderr:
        if line.startswith("Generating"):
            break
    second = world.popen("run", "z-image", "quick one", "--size", "32x32", "--steps", "2", text=True)
    out1, err1 = first.communicate(timeout=120)
    out2, err2 = second.communicate(timeout=120)
    assert (first.returncode, second.returncode) == (0, 0), err1 + err2
    assert "Waiting: position 1 in the queue" in err2
    assert len(SAVED.findall(out1)) == len(SAVED.findall(out2)) == 1


def test_ctrl_c_cancels_the_job_and_the_next_run_works(world):
    pid = world.engine_pid()
    before = pngs_in(world.work)
    run = world.popen("run", "z-image", "never finished", "--size", "64x64", "--steps", "5000", text=True)
    for line in run.stderr:
        if line.startswith("Generating: step 2/"):
            break
    run.send_signal(signal.SIGINT)
    out, err = run.communicate(timeout=30)
    assert run.returncode == 130
    assert out == "" and "Traceback" not in err
    world.wait_for(
        lambda: re.search(r"job \d+ cancelled", world.log_text()), timeout=15, what="the cancellation"
    )
    assert pngs_in(world.work) == before
    started = time.monotonic()
    after = world.cli("run", "z-image", "next", "--size", "32x32", "--steps", "2", "--no-open")
    assert after.returncode == 0, after.stderr
    assert time.monotonic() - started < 30  # not stuck behind the cancelled 5000-step job
    assert world.engine_pid() == pid


def test_clients_that_leave_cancel_their_jobs_queued_or_running(world):
    long = {"model": "z-image", "prompt": "forever", "width": 64, "height": 64, "steps": 5000}
    cancelled = lambda: len(re.findall(r"job \d+ cancelled", world.log_text()))  # noqa: E731
    before = cancelled()
    with world.http() as http:
        with http.stream("POST", "/api/generate", json=long) as running:
            lines = running.iter_lines()
            assert any(json.loads(line).get("status") == "generating" for line in lines)
            with http.stream("POST", "/api/generate", json={**long, "prompt": "waiting"}) as queued:
                first = json.loads(next(queued.iter_lines()))
                assert (first["status"], first["queue_position"]) == ("queued", 1)
            world.wait_for(lambda: "cancelled while queued" in world.log_text(), what="the queued job to go")
        world.wait_for(lambda: cancelled() == before + 2, what="the running job to stop")
    # a non-streaming client that gives up (here: a read timeout) cancels too
    with (
        httpx.Client(
            transport=httpx.HTTPTransport(uds=str(world.socket)), timeout=httpx.Timeout(30, read=1.0)
        ) as impatient,
        pytest.raises(httpx.ReadTimeout),
    ):
        impatient.post("http://engine/api/generate", json={**long, "stream": False})
    world.wait_for(lambda: cancelled() == before + 3, what="the abandoned job to stop")
    ok = world.cli("run", "z-image", "still here", "--size", "32x32", "--steps", "1")
    assert ok.returncode == 0, ok.stderr


def test_the_next_job_runs_while_pngs_are_encoded(world, monkeypatch):
    """PNG encoding (CPU) does not hold the device: with the encoder held busy, the next job still runs all
    its steps; the first job's answer waits for its PNG, and its total time counts the encoding."""
    from ollama_img.engine.jobs import DONE, STEP
    from ollama_img.engine.params import GenerateParams
    from ollama_img.engine.scheduler import Scheduler

    monkeypatch.setenv("OLLAMA_IMG_MODELS", world.env["OLLAMA_IMG_MODELS"])

    async def scenario():
        loop = asyncio.get_running_loop()
        loop.set_default_executor(ThreadPoolExecutor(max_workers=1))  # where PNGs are encoded
        gate = threading.Event()
        held = loop.run_in_executor(None, gate.wait)  # the encoder is busy until the gate opens
        scheduler = Scheduler(default_keepalive=60)
        scheduler.start()
        try:
            first, second = (
                scheduler.submit(
                    GenerateParams(model=MODEL, prompt=prompt, width=32, height=32, steps=3, seed=1), None
                )
                for prompt in ("first", "second")
            )

            async def steps_of(job):
                async for event in job.stream():
                    if event.kind == STEP and event.completed == event.total:
                        return

            await asyncio.wait_for(steps_of(second), timeout=120)
            assert not first.finished  # still waiting for its PNG
            assert not scheduler.idle
            await asyncio.sleep(0.2)
            gate.set()
            await held
            outcomes = [await asyncio.wait_for(job.outcome(), timeout=60) for job in (first, second)]
            assert [o.kind for o in outcomes] == [DONE, DONE]
            timings = outcomes[0].result.timings
            assert timings.encode >= 0.2
            assert timings.total == pytest.approx(
                timings.queue + timings.load + timings.generate + timings.encode
            )
            for outcome in outcomes:
                assert Image.open(io.BytesIO(outcome.result.pngs[0])).size == (32, 32)
        finally:
            gate.set()
            await scheduler.close()

    asyncio.run(scenario())


# -- user errors: one line, a 4xx, and the engine keeps serving ----------------------------------------


def test_unknown_models_are_one_line_and_404(world):
    result = world.cli("run", "nope", "a cat")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert result.stderr.startswith("Error: ") and "nope" in result.stderr
    stop = world.cli("stop", "nope")
    assert stop.returncode == 1 and "nope" in stop.stderr
    with world.http() as http:
        response = http.post("/api/generate", json={"model": "nope", "prompt": "x"})
        assert response.status_code == 404 and "nope" in response.json()["error"]
        response = http.post("/v1/images/generations", json={"model": "nope", "prompt": "x"})
        assert response.status_code == 404 and response.json()["error"]["code"] == "model_not_found"
        assert http.get("/api/version").status_code == 200


def test_sizes_the_model_cannot_do_are_400_whether_loaded_or_not(world):
    huge = {"model": "z-image", "prompt": "x", "width": 16 * 2048, "height": 64, "steps": 1, "stream": False}
    with world.http() as http:
        http.post("/api/generate", json={"model": "z-image", "keep_alive": 0, "stream": False})  # unloaded
        response = http.post("/api/generate", json=huge)
        assert response.status_code == 400 and "width must be at most" in response.json()["error"]
        # now loaded: refused before it waits in the queue, as a plain 400 even when streaming
        response = http.post("/api/generate", json={**huge, "stream": True})
        assert response.status_code == 400 and "width must be at most" in response.json()["error"]
    result = world.cli("run", "z-image", "x", "--width", str(16 * 2048), "--height", "64", "--steps", "1")
    assert result.returncode == 1 and result.stderr.startswith("Error: width must be at most")
    ok = world.cli("run", "z-image", "fine", "--size", "32x32", "--steps", "1")
    assert ok.returncode == 0, ok.stderr


# -- the HTTP API ------------------------------------------------------------------------------------


def test_ollama_style_stream_reports_progress_and_the_images(world):
    body = {
        "model": "z-image",
        "prompt": "a lighthouse",
        "width": 32,
        "height": 32,
        "steps": 3,
        "seed": 5,
        "n": 2,
    }
    with world.http() as http, http.stream("POST", "/api/generate", json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("application/x-ndjson")
        events = [json.loads(line) for line in response.iter_lines() if line]
    steps = [(e["completed"], e["total"]) for e in events if e.get("status") == "generating"]
    assert steps == [(k, 6) for k in range(1, 7)]
    final = events[-1]
    assert final["done"] is True and final["done_reason"] == "stop"
    assert final["seeds"] == [5, 6] and len(final["images"]) == 2
    parts = [final[f"{key}_duration"] for key in ("queue", "load", "generate", "encode")]
    assert final["generate_duration"] > 0 and final["encode_duration"] > 0
    assert abs(final["total_duration"] - sum(parts)) <= len(parts)  # each part rounded down to a ns
    for b64 in final["images"]:
        assert Image.open(io.BytesIO(base64.b64decode(b64))).size == (32, 32)


def test_the_cli_s_request_gets_the_pngs_as_bytes_after_the_final_line(world):
    """`raw_images` (what `run` sends): the final line gives each PNG's size, the PNGs follow it; the
    images are those ollama's format carries base64."""
    body = {"model": "z-image", "prompt": "a lighthouse", "width": 32, "height": 32, "steps": 2, "seed": 5}
    body["n"] = 2
    with world.http() as http:
        plain = [json.loads(line) for line in http.post("/api/generate", json=body).iter_lines() if line]
        raw = http.post("/api/generate", json={**body, "raw_images": True}).content
    lines = raw.split(b"\n")
    at = next(i for i, line in enumerate(lines) if line and json.loads(line).get("done"))
    final = json.loads(lines[at])
    assert "images" not in final and final["seeds"] == [5, 6]
    rest = b"\n".join(lines[at + 1 :])
    assert sum(final["image_bytes"]) == len(rest)
    pngs, start = [], 0
    for size in final["image_bytes"]:
        pngs.append(rest[start : start + size])
        start += size
    expected = [base64.b64decode(b64) for b64 in plain[-1]["images"]]
    assert [pixels(png) for png in pngs] == [pixels(png) for png in expected]
    with world.http() as http:  # streamed or not, a value that is not a boolean is the client's error
        for stream in (True, False):
            bad = http.post("/api/generate", json={**body, "raw_images": "yes", "stream": stream})
            assert bad.status_code == 400
            assert bad.json()["error"] == "'raw_images' must be true or false, got \"yes\""


def pixels(png: bytes) -> list:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).tolist()


def test_tags_show_and_models(world):
    with world.http() as http:
        tags = http.get("/api/tags").json()["models"]
        assert [t["name"] for t in tags] == [MODEL]
        assert tags[0]["digest"] == manifest_digest(world) and tags[0]["size"] > 0
        show = http.post("/api/show", json={"model": "z-image"}).json()
        assert show["details"]["family"] and show["layers"]
        assert http.post("/api/show", json={"model": "nope"}).status_code == 404
        assert [m["id"] for m in http.get("/v1/models").json()["data"]] == [MODEL]


def test_model_names_complete_from_the_store(world):
    env = {
        **world.env,
        "_OLLAMA_IMG_COMPLETE": "complete_bash",
        "COMP_WORDS": "ollama-img run z",
        "COMP_CWORD": "2",
    }
    done = subprocess.run(world.command(), env=env, capture_output=True, text=True, timeout=60)
    assert done.stdout.split() == [MODEL]


def test_openai_client_and_sse_against_serve(side_world):
    openai = pytest.importorskip("openai")
    serve, url = side_world.serve()
    try:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="not-needed")
        (listed,) = client.models.list().data
        assert listed.id == MODEL and time.time() - 3600 < listed.created <= time.time()  # made this session
        result = client.images.generate(
            model="z-image", prompt="a cat", size="64x64", response_format="b64_json", extra_body={"steps": 2}
        )
        image = Image.open(io.BytesIO(base64.b64decode(result.data[0].b64_json)))
        assert image.format == "PNG" and image.size == (64, 64)
        as_url = client.images.generate(
            model="z-image", prompt="a cat", size="32x32", response_format="url", extra_body={"steps": 1}
        )
        assert as_url.data[0].url.startswith("data:image/png;base64,")
        with pytest.raises(openai.BadRequestError, match="multiple of 16"):
            client.images.generate(model="z-image", prompt="a cat", size="100x100")

        events = []
        body = {"model": "z-image", "prompt": "a dog", "size": "32x32", "steps": 3, "stream": True}
        with httpx.stream("POST", f"{url}/v1/images/generations", json=body, timeout=60) as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            name = None
            for line in response.iter_lines():
                if line.startswith("event: "):
                    name = line.removeprefix("event: ")
                elif line.startswith("data: "):
                    events.append((name, json.loads(line.removeprefix("data: "))))
        assert [data for name, data in events if name == "progress"] == [
            {"step": k, "total": 3} for k in (1, 2, 3)
        ]
        name, done = events[-1]
        assert name == "done" and done["created"] > 0
        assert Image.open(io.BytesIO(base64.b64decode(done["data"][0]["b64_json"]))).size == (32, 32)

        ollama_style = httpx.post(
            f"{url}/api/generate",
            json={"model": "z-image", "prompt": "x", "width": 32, "height": 32, "steps": 1, "stream": False},
            timeout=60,
        )
        assert ollama_style.status_code == 200 and len(ollama_style.json()["images"]) == 1
    finally:
        serve.send_signal(signal.SIGINT)
        serve.communicate(timeout=30)


def test_keep_alive_zero_unloads_after_the_job_then_the_engine_leaves(tmp_path, world):
    env = EngineEnv(tmp_path, OLLAMA_IMG_MODELS=world.env["OLLAMA_IMG_MODELS"], OLLAMA_IMG_IDLE_EXIT="1")
    try:
        result = env.cli("run", "z-image", "brief", "--size", "32x32", "--steps", "1", "--keepalive", "0")
        assert result.returncode == 0, result.stderr
        pid = env.engine_pid()
        env.wait_for(lambda: f"unloaded {MODEL}" in env.log_text(), what="the unload")
        env.wait_for(lambda: not _alive(pid), timeout=20, what="the idle engine to exit")
        assert not env.socket.exists()
    finally:
        env.close()


def test_an_interactive_session_on_a_terminal(world):
    with world.terminal("run", "z-image", "--size", "32x32", "--steps", "1") as session:
        session.read_until(b">>> ")
        session.type("/?")
        session.read_until(b"/bye")
        session.type("a tiny boat")
        session.read_until(b"Image saved to: ")
        session.read_until(b">>> ", timeout=30)
        session.type("/bye")
        assert session.process.wait(timeout=30) == 0
        seen = session.seen
    path = re.search(rb"Image saved to: (\S+\.png)", seen).group(1).decode()
    assert read_png_text(path)["prompt"] == "a tiny boat"


def test_loading_another_model_unloads_the_least_recently_used(world, tiny_folder):
    created = world.cli("create", "other", "-f", str(tiny_folder))
    assert created.returncode == 0, created.stderr
    for name in ("z-image", "other"):
        result = world.cli("run", name, "swap", "--size", "32x32", "--steps", "1")
        assert result.returncode == 0, result.stderr
    log = world.log_text()
    assert log.rindex(f"unloaded {MODEL}") < log.rindex("loading other:latest")
    assert [line.split()[0] for line in world.cli("ps").stdout.splitlines()[1:]] == ["other:latest"]
    removed = world.cli("rm", "other")
    assert removed.returncode == 0, removed.stderr


def test_after_kill_9_run_starts_a_fresh_engine(world):
    old = world.engine_pid()
    assert old is not None
    os.kill(old, signal.SIGKILL)
    world.wait_for(lambda: not _alive(old), what="the engine to die")
    result = world.cli("run", "z-image", "again", "--size", "32x32", "--steps", "1")
    assert result.returncode == 0, result.stderr
    new = world.engine_pid()
    assert new not in (None, old)
    assert world.log_text().count(f"loading {MODEL}") >= 2  # the new engine loaded it afresh
