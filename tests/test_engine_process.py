"""The engine as a real process: started on demand, private, one per user, replaced when dead, gone when idle.

None of these need a model: they exercise spawning, the socket, the pid lock and request checking.
"""

import os
import signal
import socket
import stat
import subprocess
import sys
import time

import pytest

from tests.fixtures.engine_env import EngineEnv, _alive


@pytest.fixture
def world(tmp_path):
    env = EngineEnv(tmp_path)
    yield env
    env.close()


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    """One engine for the request-checking tests."""
    env = EngineEnv(tmp_path_factory.mktemp("engine"))
    try:
        env.start_engine()
        yield env
    finally:
        env.close()


def test_started_on_demand_detached_with_a_private_socket(world):
    assert world.engine_pid() is None
    pid = world.start_engine()
    assert pid and pid != os.getpid()
    assert os.getsid(pid) == pid  # its own session: Ctrl-C in the terminal does not reach it
    assert stat.S_IMODE(world.runtime.stat().st_mode) == 0o700
    assert stat.S_ISSOCK(world.socket.stat().st_mode)
    assert stat.S_IMODE(world.socket.stat().st_mode) == 0o600
    assert f"engine (pid {pid}) listening on unix:{world.socket}" in world.log_text()
    assert world.start_engine() == pid  # found, not started again
    with world.http() as http:
        assert http.get("/api/version").json()["version"]
        assert http.get("/api/ps").json() == {"models": []}
        assert http.get("/").text == "ollama-img is running"


def test_two_simultaneous_starts_make_one_engine(world):
    code = "from ollama_img.engine.spawn import ensure_engine; ensure_engine()"
    starters = [
        subprocess.Popen([sys.executable, "-c", code], env=world.env, stderr=subprocess.PIPE, text=True)
        for _ in range(3)
    ]
    for starter in starters:
        _, err = starter.communicate(timeout=90)
        assert starter.returncode == 0, err
    assert world.engine_pid() is not None
    assert world.log_text().count("listening on") == 1


def test_a_stale_socket_is_replaced(world):
    world.runtime.mkdir(mode=0o700, parents=True)
    dead = socket.socket(socket.AF_UNIX)
    dead.bind(str(world.socket))
    dead.close()  # the file stays, nobody listens: what a crashed engine leaves
    assert world.socket.exists()
    pid = world.start_engine()
    assert pid is not None
    with world.http() as http:
        assert http.get("/api/version").status_code == 200


def test_after_kill_9_the_next_start_makes_a_fresh_engine(world):
    first = world.start_engine()
    os.kill(first, signal.SIGKILL)
    world.wait_for(lambda: not _alive(first), what="the engine to die")
    assert world.socket.exists()  # left behind
    second = world.start_engine()
    assert second not in (None, first)
    with world.http() as http:
        assert http.get("/api/version").status_code == 200


def test_an_idle_engine_exits_by_itself_and_removes_its_socket(tmp_path):
    world = EngineEnv(tmp_path, OLLAMA_IMG_IDLE_EXIT="0.5")
    try:
        pid = world.start_engine()
        world.wait_for(lambda: not _alive(pid), timeout=20, what="the idle engine to exit")
        assert not world.socket.exists()
        assert "idle" in world.log_text()
        ps = world.cli("ps")
        assert ps.returncode == 0 and ps.stdout.split() == ["NAME", "ID", "SIZE", "PROCESSOR", "UNTIL"]
        assert world.engine_pid() is None and not world.socket.exists()  # ps started nothing
    finally:
        world.close()


def test_ps_with_no_engine_prints_the_empty_table_and_starts_none(world):
    result = world.cli("ps")
    assert result.returncode == 0, result.stderr
    assert (
        result.stdout.split() == ["NAME", "ID", "SIZE", "PROCESSOR", "UNTIL"]
        and len(result.stdout.splitlines()) == 1
    )
    assert result.stderr == ""
    assert world.engine_pid() is None and not world.socket.exists()


def test_an_engine_that_cannot_start_is_one_clear_line(tmp_path):
    world = EngineEnv(tmp_path, OLLAMA_IMG_KEEP_ALIVE="soon")
    try:
        result = world.cli("run", "z-image", "a cat")
        assert result.returncode == 1
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr
        assert lines[0].startswith("Error: the engine exited during start-up")
        assert "OLLAMA_IMG_KEEP_ALIVE" in lines[0] and str(world.log) in lines[0]
    finally:
        world.close()


def test_usage_errors_are_short_not_tracebacks(world):
    result = world.cli("run")
    assert result.returncode == 2
    assert "Missing argument" in result.stderr and "Traceback" not in result.stderr
    result = world.cli("run", "z-image", "x", "--size", "100x100")
    assert result.returncode == 1
    assert result.stderr.strip() == "Error: 'width' must be a multiple of 16, got 100"
    assert world.engine_pid() is None  # refused before starting anything


# -- request checking on a live engine ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{not json", "invalid JSON"),
        (b"[]", "must be a JSON object"),
        (b'{"prompt": "a cat"}', "missing 'model'"),
        (b'{"model": "z-image", "prompt": ""}', "empty prompt"),
        (b'{"model": "z-image", "prompt": "x", "width": 100}', "multiple of 16"),
        (b'{"model": "z-image", "prompt": "x", "steps": -2}', "'steps' must be at least 1"),
        (b'{"model": "z-image", "prompt": "x", "n": 11}', "'n' must be at most 10"),
        (b'{"model": "z-image", "prompt": "x", "keep_alive": "soon"}', "keep_alive"),
        (b'{"model": "z-image", "prompt": "x", "stream": "yes"}', "'stream' must be true or false"),
    ],
)
def test_bad_requests_get_400_with_a_message(engine, body, message):
    with engine.http() as http:
        response = http.post("/api/generate", content=body)
        assert response.status_code == 400
        assert message in response.json()["error"]
        assert http.get("/api/version").status_code == 200  # still serving


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"model": "z-image", "prompt": "x", "size": "100x100"}', "multiple of 16"),
        (b'{"model": "z-image", "prompt": "x", "size": "big"}', "invalid size"),
        (b'{"model": "z-image"}', "missing 'prompt'"),
        (b'{"model": "z-image", "prompt": "x", "response_format": "gif"}', "response_format"),
        (b'{"model": "z-image", "prompt": "x", "output_format": "jpeg"}', "only 'png'"),
        (b"nope", "invalid JSON"),
    ],
)
def test_openai_route_errors_in_openai_shape(engine, body, message):
    with engine.http() as http:
        response = http.post("/v1/images/generations", content=body)
        assert response.status_code == 400
        error = response.json()["error"]
        assert message in error["message"] and error["type"] == "invalid_request_error"


def test_unknown_routes_and_methods_answer_json(engine):
    with engine.http() as http:
        missing = http.get("/api/nothing")
        assert missing.status_code == 404 and "not found" in missing.json()["error"]
        wrong = http.get("/api/generate")
        assert wrong.status_code == 405 and wrong.json()["error"]


def test_serve_in_the_foreground_answers_on_tcp_and_the_socket(world):
    serve = world.popen("serve", "--host", "127.0.0.1:0", stderr=subprocess.PIPE, text=True)
    try:
        url = None
        deadline = time.monotonic() + 60
        while url is None and time.monotonic() < deadline:
            line = serve.stderr.readline()
            if "listening on" in line:
                url = line.rsplit(" and ", 1)[1].split(";")[0].strip()
        assert url and url.startswith("http://127.0.0.1:")
        import httpx

        assert httpx.get(f"{url}/api/version", timeout=10).status_code == 200
        with world.http() as http:
            assert http.get("/api/ps").json() == {"models": []}
        second = world.cli("serve", "--socket-only")
        assert second.returncode == 1
        assert f"an engine is already running (pid {serve.pid}" in second.stderr
        assert len(second.stderr.strip().splitlines()) == 1
        ps = world.cli("ps")
        assert ps.returncode == 0 and world.engine_pid() == serve.pid  # the CLI uses the serving engine
    finally:
        serve.send_signal(signal.SIGINT)
        serve.communicate(timeout=30)
    assert serve.returncode == 0
    assert not world.socket.exists()
