"""The engine as a real process: started on demand, private, one per user, replaced when dead, gone when idle.

None of these need a model: they exercise spawning, the socket, the pid lock and request checking.
"""

import os
import signal
import socket
import stat
import subprocess
import sys

import httpx
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


def test_sigusr1_writes_every_threads_stack_to_the_log_and_the_engine_goes_on(world):
    pid = world.start_engine()
    before = len(world.log_text())
    os.kill(pid, signal.SIGUSR1)
    world.wait_for(lambda: "in run_engine" in world.log_text()[before:], what="the stacks in the engine log")
    dumped = world.log_text()[before:]
    assert "--- thread stacks" in dumped and "Thread MainThread" in dumped
    assert "ollama_img/engine/main.py" in dumped and "in run_engine" in dumped  # the engine's own frames
    assert _alive(pid)
    with world.http() as http:
        assert http.get("/api/version").status_code == 200


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


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--steps", "0"], "Error: --steps must be at least 1, got 0"),
        (["--width", "17"], "Error: --width must be a multiple of 16, got 17"),
        (["--seed", "-1"], "Error: --seed must be at least 0, got -1"),
        (["--seed", "1" + "0" * 23], "Error: --seed must be at most"),
        (["--guidance", "-1"], "Error: --guidance must be at least 0, got -1.0"),
        (["--guidance", "inf"], "Error: --guidance must be a finite number, got Infinity"),
        (["--guidance", "nan"], "Error: --guidance must be a finite number, got NaN"),
        (["--teacache", "inf"], "Error: --teacache must be a finite number, got Infinity"),
        (["--teacache", "-0.5"], "Error: --teacache must be at least 0, got -0.5"),
        (["--keepalive", "soon"], "Error: invalid --keepalive 'soon'"),
        (["--keepalive", "1" + "0" * 400], "Error: invalid --keepalive '1000"),
    ],
)
def test_bad_flags_are_one_line_before_any_engine_starts(world, flags, message):
    result = world.cli("run", "z-image", "a cat", *flags)
    assert result.returncode == 1
    assert result.stderr.startswith(message) and result.stderr.count("\n") == 1, result.stderr
    assert result.stdout == ""
    assert world.engine_pid() is None and not world.socket.exists()
    assert not world.log.exists()  # not even started to fail


# -- request checking on a live engine ---------------------------------------------------------------


BIG = "1" + "0" * 400  # beyond any float


def _ollama_error(response) -> str:
    return response.json()["error"]


def _openai_error(response) -> str:
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    return error["message"]


OLLAMA = ("/api/generate", _ollama_error)
OPENAI = ("/v1/images/generations", _openai_error)


@pytest.mark.parametrize(
    ("route", "body", "message"),
    [
        (OLLAMA, b"{not json", "invalid JSON"),
        (OLLAMA, b"[]", "must be a JSON object"),
        (OLLAMA, b'{"prompt": "a cat"}', "missing 'model'"),
        (OLLAMA, b'{"model": "z-image", "prompt": ""}', "empty prompt"),
        (OLLAMA, b'{"model": "z-image", "prompt": "x", "width": 100}', "multiple of 16"),
        (OLLAMA, b'{"model": "z-image", "prompt": "x", "steps": -2}', "'steps' must be at least 1"),
        (OLLAMA, b'{"model": "z-image", "prompt": "x", "n": 11}', "'n' must be at most 10"),
        (OLLAMA, b'{"model": "z-image", "prompt": "x", "keep_alive": "soon"}', "keep_alive"),
        (OLLAMA, b'{"model": "z-image", "prompt": "x", "stream": "yes"}', "'stream' must be true or false"),
        (OLLAMA, b'{"model": "z-image", "prompt": "x", "guidance": 1e999}', "'guidance' must be a finite"),
        (OLLAMA, b'{"model": "z-image", "prompt": "x", "teacache": NaN}', "'teacache' must be a finite"),
        (OLLAMA, f'{{"model": "z-image", "prompt": "x", "guidance": {BIG}}}'.encode(), "'guidance' must be"),
        (OLLAMA, f'{{"model": "z-image", "prompt": "x", "teacache": {BIG}}}'.encode(), "'teacache' must be"),
        (OLLAMA, f'{{"model": "z-image", "prompt": "x", "keep_alive": {BIG}}}'.encode(), "keep_alive"),
        (OLLAMA, f'{{"model": "z-image", "keep_alive": {BIG}}}'.encode(), "keep_alive"),
        (OLLAMA, f'{{"model": "z-image", "prompt": "x", "seed": {"9" * 5000}}}'.encode(), "invalid JSON"),
        (OPENAI, b'{"model": "z-image", "prompt": "x", "size": "100x100"}', "multiple of 16"),
        (OPENAI, b'{"model": "z-image", "prompt": "x", "size": "big"}', "invalid size"),
        (OPENAI, b'{"model": "z-image"}', "missing 'prompt'"),
        (OPENAI, b'{"model": "z-image", "prompt": "x", "response_format": "gif"}', "response_format"),
        (OPENAI, b'{"model": "z-image", "prompt": "x", "output_format": "jpeg"}', "only 'png'"),
        (OPENAI, b"nope", "invalid JSON"),
        (OPENAI, b'{"model": "z-image", "prompt": "x", "guidance": -1e999}', "'guidance' must be a finite"),
        (OPENAI, f'{{"model": "z-image", "prompt": "x", "teacache": {BIG}}}'.encode(), "'teacache' must be"),
    ],
)
def test_bad_requests_get_400_with_a_message(engine, route, body, message):
    path, error_of = route
    with engine.http() as http:
        response = http.post(path, content=body)
        assert response.status_code == 400, response.text
        assert message in error_of(response)
        assert len(error_of(response)) < 300  # a 400-digit number is not echoed whole
        assert http.get("/api/version").status_code == 200  # still serving


def test_unknown_routes_and_methods_answer_json(engine):
    with engine.http() as http:
        missing = http.get("/api/nothing")
        assert missing.status_code == 404 and "not found" in missing.json()["error"]
        wrong = http.get("/api/generate")
        assert wrong.status_code == 405 and wrong.json()["error"]


def test_serve_in_the_foreground_answers_on_tcp_and_the_socket(world):
    serve, url = world.serve()
    try:
        assert url.startswith("http://127.0.0.1:")
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


@pytest.mark.parametrize("host", ["1.2.3.4:8080", "no-such-host.invalid:8080"])
def test_serve_that_cannot_listen_on_tcp_leaves_no_socket(world, host):
    result = world.cli("serve", "--host", host)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"Error: cannot listen on {host}: "), result.stderr
    assert world.engine_pid() is None
    assert world.runtime.is_dir() and not world.socket.exists()
    assert world.start_engine() is not None  # and the next engine starts as usual
