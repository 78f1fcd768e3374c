"""The engine under a memory budget, end to end (real CLI, engine process, store, MLX on the CPU): a
request that cannot fit is one clear error and the engine serves the next; `ps`, `/api/ps` and `show`
report what each model holds and its plan; a second model evicts the first when both do not fit."""

import json

import pytest

from tests.fixtures.engine_env import EngineEnv

# The tiny model needs about 10 MB at 64x48 and 0.4 GB at 512x512 on the CPU (float32 activations).
BUDGET = "20MB"


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_folder):
    env = EngineEnv(tmp_path_factory.mktemp("memory"), OLLAMA_IMG_GPU_MEMORY=BUDGET)
    try:
        env.create("z-image", tiny_folder)
        yield env
    finally:
        env.close()


def run(world, size: str, prompt: str = "a red fox", *extra: str):
    return world.cli("run", "z-image", prompt, "--size", size, "--steps", "2", "--no-open", *extra)


def test_too_large_a_request_is_one_line_and_the_engine_serves_the_next(world):
    first = run(world, "64x48")
    assert first.returncode == 0, first.stderr
    pid = world.engine_pid()

    refused = run(world, "256x256")
    assert refused.returncode == 1
    (line,) = refused.stderr.strip().splitlines()
    assert line.startswith("Error: ") and "needs about" in line and "256x256" in line
    assert "20 MB (OLLAMA_IMG_GPU_MEMORY)" in line and "fits)" in line

    with world.http() as http:
        answer = http.post(
            "/api/generate",
            json={
                "model": "z-image",
                "prompt": "x",
                "width": 512,
                "height": 512,
                "steps": 1,
                "stream": False,
            },
        )
    assert answer.status_code == 503 and "needs about" in answer.json()["error"]

    again = run(world, "64x48", "a second fox")
    assert again.returncode == 0, again.stderr
    assert world.engine_pid() == pid  # the same engine, still serving


def test_ps_and_api_ps_report_the_plan(world):
    assert run(world, "64x48").returncode == 0
    with world.http() as http:
        (model,) = http.get("/api/ps").json()["models"]
    memory = model["memory"]
    assert memory["budget"]["bytes"] == 20 * 10**6 and memory["budget"]["source"] == "OLLAMA_IMG_GPU_MEMORY"
    assert memory["peak"] <= 20 * 10**6 and memory["request"]["width"] == 64
    assert {c["name"] for c in memory["components"]} == {"text_encoder", "transformer", "vae"}
    assert any(line.startswith("transformer ") for line in memory["summary"])
    assert model["size"] > 0 and model["processor"] == "100% CPU"

    (row,) = world.cli("ps").stdout.splitlines()[1:]
    assert "100% CPU" in row and " MB" in row

    shown = world.cli("show", "z-image")
    assert shown.returncode == 0, shown.stderr
    assert "Memory (1024x1024, estimated for" in shown.stdout and "everything resident" in shown.stdout
    assert "within the budget" in shown.stdout  # the tiny model's 1024x1024 does not fit in 20 MB
    doc = json.loads(world.cli("show", "z-image", "--json").stdout)
    assert set(doc["memory"]["needs"]) == {"resident", "encoders on demand", "one stage at a time"}


def test_a_malformed_budget_is_one_line_before_any_engine(tmp_path, tiny_folder):
    env = EngineEnv(tmp_path, OLLAMA_IMG_GPU_MEMORY="twelve gigs")
    try:
        result = env.cli("run", "z-image", "x", "--size", "32x32", "--no-open")
        assert result.returncode == 1
        assert result.stderr.strip().splitlines() == [
            "Error: OLLAMA_IMG_GPU_MEMORY must be a size such as 12GB, 800MB or 1.5GiB, got 'twelve gigs'"
        ]
        assert env.engine_pid() is None
    finally:
        env.close()


def test_serve_takes_a_budget_flag(tmp_path, tiny_folder):
    env = EngineEnv(tmp_path)
    try:
        env.create("z-image", tiny_folder)
        serve, _ = env.serve("--gpu-memory", "2MB")
        try:
            refused = run(env, "64x48")
            assert refused.returncode == 1 and "2 MB (--gpu-memory)" in refused.stderr
            assert "needs about" in refused.stderr
        finally:
            serve.terminate()
            serve.wait(timeout=30)
        bad = env.cli("serve", "--gpu-memory", "lots")
        assert bad.returncode == 1 and "--gpu-memory must be a size" in bad.stderr
    finally:
        env.close()


@pytest.mark.parametrize(
    ("budget", "kept"), [("11MB", ["other:latest"]), ("40MB", ["other:latest", "z-image:latest"])]
)
def test_a_second_model_evicts_the_first_only_when_both_do_not_fit(tmp_path, tiny_folder, budget, kept):
    env = EngineEnv(tmp_path, OLLAMA_IMG_GPU_MEMORY=budget, OLLAMA_IMG_MAX_LOADED_MODELS="2")
    try:
        for name in ("z-image", "other"):
            env.create(name, tiny_folder)
        assert run(env, "64x48").returncode == 0
        second = env.cli("run", "other", "a cat", "--size", "64x48", "--steps", "2", "--no-open")
        assert second.returncode == 0, second.stderr
        with env.http() as http:
            loaded = sorted(m["name"] for m in http.get("/api/ps").json()["models"])
        assert loaded == kept
        evicted = "unloading z-image:latest to make room for other:latest" in env.log_text()
        assert evicted == (len(kept) == 1)
    finally:
        env.close()
