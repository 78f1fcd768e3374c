"""Issue 9: an engine nobody can crash, freeze, fool or drive from a web page.

Every test drives a real engine process (`serve`, or the background engine `run` spawns) on the tiny
model: the nine defects the issue found, a fuzz of malformed requests to every route, and a soak of 300
generations at flat memory. Images are 32x32 with one step (milliseconds each).
"""

import base64
import functools
import io
import json
import os
import random
import resource
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest

from ollama_img.engine.guard import DEFAULT_ORIGINS
from ollama_img.engine.handling import SHUTTING_DOWN
from ollama_img.engine.limits import (
    HEADER_TIMEOUT,
    MAX_BODY_BYTES,
    MAX_JSON_DEPTH,
    MAX_PIXELS,
    MAX_PROMPT_CHARS,
)
from ollama_img.png_meta import read_png_text
from tests.fixtures.engine_env import EngineEnv, _alive, side_world, world_with_model

TINY = {"model": "z-image", "prompt": "a red fox", "width": 32, "height": 32, "steps": 1, "seed": 1}


class Served:
    """A `serve` process whose log is read continuously (a full stderr pipe would block the engine)."""

    def __init__(self, env: EngineEnv, *args, **kw):
        self.env = env
        self.process, self.url = env.serve(*args, **kw)
        self.port = int(self.url.rsplit(":", 1)[1])
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()

    def _drain(self):
        for line in self.process.stderr:
            self.lines.append(line)

    def log(self) -> str:
        return "".join(self.lines)

    def http(self, **kw) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=kw.pop("timeout", 60), **kw)

    def stop(self, sig=signal.SIGTERM, timeout: float = 60) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        code = self.process.wait(timeout=timeout)
        self._reader.join(timeout=10)
        return code


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_folder):
    yield from world_with_model(tmp_path_factory.mktemp("harden"), tiny_folder)


@pytest.fixture(scope="module")
def served(world):
    """The module's `serve` (socket + TCP on a free loopback port), with the model loaded."""
    server = Served(world)
    try:
        with server.http() as http:
            assert http.post("/api/generate", json={**TINY, "stream": False}).status_code == 200
        yield server
    finally:
        server.stop()


@pytest.fixture
def side(tmp_path, world):
    """Another world (its own runtime dir, so its own engine) on the module's store."""
    yield from side_world(tmp_path, world)


def assert_json_error(response: httpx.Response, status: int | None = None, *words: str) -> str:
    """A 4xx whose body is a JSON error (ollama's or OpenAI's shape); returns its message."""
    assert 400 <= response.status_code < 500, (response.status_code, response.text[:300])
    if status is not None:
        assert response.status_code == status, (response.status_code, response.text[:300])
    error = response.json()["error"]
    message = error["message"] if isinstance(error, dict) else error
    assert isinstance(message, str) and message
    for word in words:
        assert word in message, message
    return message


def raw_request(port: int, data: bytes, *, read: bool = True, timeout: float = 10) -> bytes:
    """Send bytes on a fresh TCP connection; return what comes back until the server closes it."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        if not read:
            return b""
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except (ConnectionResetError, TimeoutError):
            pass
        return b"".join(chunks)


def status_of(raw: bytes) -> int:
    return int(raw.split(b" ", 2)[1])


# -- 1. sizes ------------------------------------------------------------------------------------------


def test_1_images_beyond_the_pixel_limit_are_refused_up_front(served, side):
    with served.http() as http:
        big = http.post("/api/generate", json={**TINY, "width": 4096, "height": 4096})
        assert_json_error(big, 400, str(MAX_PIXELS), "4096x4096")
        wide = http.post(
            "/api/generate", json={**TINY, "width": 8192, "height": None}
        )  # height: default 1024
        assert_json_error(wide, 400, str(MAX_PIXELS), "8192x1024")
        openai = http.post(
            "/v1/images/generations", json={"model": "z-image", "prompt": "x", "size": "3072x2048"}
        )
        assert_json_error(openai, 400, str(MAX_PIXELS))
        assert http.get("/api/version").status_code == 200
    # The CLI refuses before starting anything.
    result = side.cli("run", "z-image", "x", "--size", "4096x4096")
    assert result.returncode == 1 and str(MAX_PIXELS) in result.stderr, result.stderr
    assert side.engine_pid() is None


# -- 2. prompts, bodies, a busy engine -----------------------------------------------------------------


def test_2_prompts_and_bodies_are_bounded(served):
    with served.http() as http:
        long = http.post("/api/generate", json={**TINY, "prompt": "a" * (MAX_PROMPT_CHARS + 1)})
        assert_json_error(long, 400, "'prompt' is too long", str(MAX_PROMPT_CHARS))
        negative = {**TINY, "negative_prompt": "b" * (MAX_PROMPT_CHARS + 1), "guidance": 2.0}
        assert_json_error(http.post("/api/generate", json=negative), 400, "'negative_prompt' is too long")
        openai = {"model": "z-image", "prompt": "c" * (MAX_PROMPT_CHARS + 1), "size": "32x32"}
        assert_json_error(http.post("/v1/images/generations", json=openai), 400, "'prompt' is too long")
        at_limit = http.post(
            "/api/generate", json={**TINY, "prompt": "d " * (MAX_PROMPT_CHARS // 2), "stream": False}
        )
        assert at_limit.status_code == 200, at_limit.text[:300]
        png = base64.b64decode(at_limit.json()["images"][0])
        assert png.startswith(b"\x89PNG")
        # A body just under the limit is read and parsed (then refused for its prompt), not a 413.
        nearly = json.dumps({**TINY, "prompt": "e" * (MAX_BODY_BYTES - 1000)}).encode()
        response = http.post("/api/generate", content=nearly, headers={"content-type": "application/json"})
        assert_json_error(response, 400, "'prompt' is too long")
    # A declared length over the limit is refused before the body is sent.
    for path in (b"/api/generate", b"/api/show", b"/v1/images/generations", b"/api/ps"):
        head = b"POST " + path + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 300000000\r\n\r\n{"
        raw = raw_request(served.port, head)
        assert status_of(raw) == 413, raw[:200]
        body = json.loads(raw.split(b"\r\n\r\n", 1)[1])
        assert str(MAX_BODY_BYTES) in json.dumps(body)

    # A streamed body with no declared length is cut off once it passes the limit.
    def chunks():
        piece = b" " * (1 << 20)
        for _ in range(MAX_BODY_BYTES // len(piece) + 8):
            yield piece

    with served.http() as http:
        try:
            streamed = http.post("/api/generate", content=chunks())
            assert_json_error(streamed, 413, str(MAX_BODY_BYTES))
        except httpx.TransportError:
            pass  # the engine answered and closed while we were still sending: also a refusal
        assert http.get("/api/version").status_code == 200


def test_2_run_waits_for_an_engine_that_is_slow_to_answer(side):
    """An engine that holds its lock but does not answer (here: stopped for 12 s) is waited for; `run`
    used to start a second one, which found the lock taken: "an engine is already running"."""
    pid = side.start_engine()
    os.kill(pid, signal.SIGSTOP)
    try:
        run = side.popen("run", "z-image", "a fox", "--size", "32x32", "--steps", "1", text=True)
        time.sleep(12)
    finally:
        os.kill(pid, signal.SIGCONT)
    out, err = run.communicate(timeout=120)
    assert run.returncode == 0, err
    assert "Image saved to:" in out
    assert side.engine_pid() == pid


# -- 3. Host and Origin ----------------------------------------------------------------------------------


def test_3_tcp_answers_only_local_hosts_and_allowed_origins(served, world):
    with served.http() as http:
        assert http.post("/api/generate", json={"model": "z-image", "keep_alive": 0}).status_code == 200
        for host in ("evil.example", "evil.example:11434", "127.0.0.1.nip.io"):
            refused = http.get("/api/ps", headers={"host": host})
            assert_json_error(refused, 403, "host")
        for host in ("localhost", "127.0.0.1:9", "[::1]:11434", "app.localhost", socket.gethostname()):
            assert http.get("/api/version", headers={"host": host}).status_code == 200
        # A page on another site: a "simple" cross-origin POST (no preflight) must not load a model.
        evil = {"origin": "http://evil.example", "content-type": "text/plain"}
        load = json.dumps({"model": "z-image", "keep_alive": -1})
        assert_json_error(http.post("/api/generate", content=load, headers=evil), 403, "origin")
        assert http.get("/api/ps").json() == {"models": []}
        preflight = {"origin": "http://evil.example", "access-control-request-method": "POST"}
        assert_json_error(http.options("/v1/images/generations", headers=preflight), 403)
        # Pages of this machine and app shells: preflight, then the answer carries the CORS header.
        for origin in ("http://localhost:3000", "https://127.0.0.1", "app://shell", "tauri://localhost"):
            pre = http.options(
                "/api/generate",
                headers={
                    "origin": origin,
                    "access-control-request-method": "POST",
                    "access-control-request-headers": "content-type",
                },
            )
            assert pre.status_code == 204, pre.text
            assert pre.headers["access-control-allow-origin"] == origin
            assert "POST" in pre.headers["access-control-allow-methods"]
            assert "content-type" in pre.headers["access-control-allow-headers"].lower()
            tags = http.get("/api/tags", headers={"origin": origin})
            assert tags.status_code == 200 and tags.headers["access-control-allow-origin"] == origin
        same = http.get("/api/ps", headers={"origin": served.url})  # same origin: not a CORS request
        assert same.status_code == 200
    # The socket is the user's alone: any Host, any Origin.
    with world.http() as http:
        hostile = {"host": "evil.example", "origin": "http://evil.example"}
        assert http.get("/api/version", headers=hostile).status_code == 200
        assert http.get("/api/ps", headers=hostile).json() == {"models": []}


def test_3_origins_from_the_environment_and_hosts_of_a_wider_listener(side):
    """OLLAMA_IMG_ORIGINS adds origins; a listener bound beyond loopback accepts any Host name (it is
    reached by other names) but still checks Origin."""
    side.env["OLLAMA_IMG_ORIGINS"] = "https://myapp.example, http://*.corp.example"
    server = Served(side, host="0.0.0.0:0")
    try:
        with server.http() as http:
            assert http.get("/api/version", headers={"host": "my-machine.lan:11434"}).status_code == 200
            for origin in ("https://myapp.example", "http://tools.corp.example"):
                ok = http.get("/api/tags", headers={"origin": origin})
                assert ok.status_code == 200 and ok.headers["access-control-allow-origin"] == origin
            for origin in ("https://evil.example", "https://myapp.example.evil.example", "null"):
                assert_json_error(http.get("/api/tags", headers={"origin": origin}), 403)
    finally:
        assert server.stop() == 0
    assert "http://localhost:*" in DEFAULT_ORIGINS


# -- 4. names are store names ------------------------------------------------------------------------------


def test_4_a_model_name_is_never_a_folder_on_the_engines_disk(side, tiny_folder, tmp_path):
    """`tmp/<x>/y` names a store model; a folder /tmp/<x>/y:latest (anyone can make one) must not
    shadow it. The background engine runs from "/", where that relative name found the folder."""
    unique = f"oi{os.getpid()}"
    name = f"tmp/{unique}/y"
    assert side.cli("create", name, "-f", str(tiny_folder)).returncode == 0
    planted = Path(f"/tmp/{unique}/y:latest")
    import shutil

    shutil.copytree(tiny_folder, planted)
    try:
        result = side.cli("run", name, "a fox", "--size", "32x32", "--steps", "1", "--format", "json")
        assert result.returncode == 0, result.stderr
        path = json.loads(result.stdout)["paths"][0]
        with side.http() as http:
            digest = http.post("/api/show", json={"model": name}).json()["digest"]
        assert read_png_text(path)["model_digest"] == digest  # from the store, not the folder
    finally:
        shutil.rmtree(Path(f"/tmp/{unique}"), ignore_errors=True)
        side.cli("rm", name)


# -- 5. digests ----------------------------------------------------------------------------------------------


def _tensor_blob(env: EngineEnv, model: str) -> Path:
    manifest_dir = Path(env.env["OLLAMA_IMG_MODELS"]) / "manifests" / "registry.ollama.ai" / "library"
    doc = json.loads((manifest_dir / model / "latest").read_text())
    layer = next(la for la in doc["layers"] if la["name"].startswith("transformer/layers.0"))
    return Path(env.env["OLLAMA_IMG_MODELS"]) / "blobs" / layer["digest"].replace(":", "-")


def test_5_a_damaged_blob_never_makes_an_image_and_create_repairs_it(tmp_path, tiny_folder):
    env = EngineEnv(tmp_path)
    try:
        assert env.cli("create", "m", "-f", str(tiny_folder)).returncode == 0
        blob = _tensor_blob(env, "m")
        data = bytearray(blob.read_bytes())
        data[-8:] = bytes(255 - b for b in data[-8:])  # flip bytes of the tensor, same size
        blob.write_bytes(bytes(data))

        run = env.cli("run", "m", "a fox", "--size", "32x32", "--steps", "1", "-o", str(tmp_path / "x.png"))
        assert run.returncode == 1 and "damaged" in run.stderr and "transformer/layers.0" in run.stderr
        assert not (tmp_path / "x.png").exists()
        checked = env.cli("verify", "m")
        assert checked.returncode == 1 and "does not match its digest" in checked.stdout, checked.stdout

        again = env.cli("create", "m", "-f", str(tiny_folder))  # a re-run replaces what does not match
        assert again.returncode == 0, again.stderr
        assert "1 new blobs" in again.stdout, again.stdout
        import hashlib

        assert "sha256-" + hashlib.sha256(blob.read_bytes()).hexdigest() == blob.name
        assert env.cli("verify").returncode == 0
        run = env.cli("run", "m", "a fox", "--size", "32x32", "--steps", "1", "-o", str(tmp_path / "x.png"))
        assert run.returncode == 0, run.stderr

        blob.unlink()  # a missing blob: list and show say so
        listed = env.cli("list")
        assert listed.returncode == 0 and "damaged: 1 blob(s) missing" in listed.stdout, listed.stdout
        shown = env.cli("show", "m")
        assert "Damaged: 1 blob(s) missing" in shown.stdout
        doc = json.loads(env.cli("show", "m", "--json").stdout)
        assert [d["problem"] for d in doc["damaged_layers"]] == ["missing"]
    finally:
        env.close()


# -- 6. signals during a job ----------------------------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_6_a_signal_during_a_job_cancels_it_answers_and_exits_0(side, sig):
    server = Served(side)
    lines: list[str] = []

    def generate():
        body = {**TINY, "steps": 5000}
        with server.http() as http, http.stream("POST", "/api/generate", json=body) as response:
            lines.extend(response.iter_lines())

    client = threading.Thread(target=generate)
    client.start()
    deadline = time.monotonic() + 60
    while not any('"generating"' in line for line in lines) and time.monotonic() < deadline:
        time.sleep(0.02)
    code = server.stop(sig)
    client.join(timeout=30)
    assert code == 0, server.log()[-2000:]
    assert json.loads(lines[-1]) == {"error": SHUTTING_DOWN}
    log = server.log()
    assert "terminate called" not in log and "Traceback" not in log and " ERROR " not in log, log[-3000:]


def test_6_sigterm_to_the_background_engine_during_run(side):
    pid = side.start_engine()
    run = side.popen("run", "z-image", "a fox", "--size", "32x32", "--steps", "5000", text=True)
    for line in run.stderr:
        if "Generating: step" in line:
            break
    os.kill(pid, signal.SIGTERM)
    _, err = run.communicate(timeout=60)
    assert run.returncode == 1 and SHUTTING_DOWN in err, err
    side.wait_for(lambda: not _alive(pid), what="the engine to exit")
    log = side.log_text()
    assert "terminate called" not in log and "Traceback" not in log, log[-3000:]


# -- 7. connection floods ---------------------------------------------------------------------------------


def _at_most_1024_files():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(1024, soft), hard))


def test_7_a_tcp_flood_never_stops_the_socket(side):
    """1100 idle TCP connections against an engine started with 1024 open files: the socket (the CLI's
    path) keeps answering, TCP answers 503 beyond its cap, idle connections are closed, the log stays small."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 1100 + 200
    if hard != resource.RLIM_INFINITY and hard < want:
        pytest.skip(f"the hard open-files limit ({hard}) is too low to open 1100 connections")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, want), hard))
    server = Served(side, preexec_fn=_at_most_1024_files)
    flood = []
    try:
        for i in range(1100):
            try:
                flood.append(socket.create_connection(("127.0.0.1", server.port), timeout=10))
            except OSError as exc:
                raise AssertionError(f"connection {i}: {exc}; engine log:\n{server.log()[-3000:]}") from None
        time.sleep(1)
        with side.http() as http:
            assert http.get("/api/version").status_code == 200
            assert http.post("/api/generate", json={**TINY, "stream": False}).status_code == 200
        ps = side.cli("ps")
        assert ps.returncode == 0 and "z-image:latest" in ps.stdout, ps.stderr
        with server.http(timeout=10) as http:
            answer = http.get("/api/version")
            assert answer.status_code in (200, 503) and answer.json()
        time.sleep(HEADER_TIMEOUT + 2)  # idle connections are closed by the engine
        closed = 0
        for sock in flood:
            sock.settimeout(5)
            try:
                data = sock.recv(4096)
            except (ConnectionResetError, TimeoutError):
                data = b""
            closed += data == b"" or data.startswith(b"HTTP/1.1 503")
        assert closed == len(flood)
        with server.http() as http:
            assert http.get("/api/version").status_code == 200
    finally:
        for sock in flood:
            sock.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        assert server.stop() == 0
    log = server.log()
    assert len(log) < 100_000, f"the log grew to {len(log)} bytes"
    assert "out of system resource" not in log


def test_7_slow_headers_are_cut_off(served):
    """A client that trickles its request line never gets to hold the connection."""
    with socket.create_connection(("127.0.0.1", served.port), timeout=HEADER_TIMEOUT + 10) as sock:
        started = time.monotonic()
        closed = False
        try:
            for byte in b"GET /api/ps HTTP/1.1\r\nHost: 127.0.0.1\r\n":
                sock.sendall(bytes([byte]))
                time.sleep(0.5)
        except (BrokenPipeError, ConnectionResetError):
            closed = True
        if not closed:
            closed = sock.recv(100) == b""
    assert closed and time.monotonic() - started < HEADER_TIMEOUT + 5


# -- 8. nesting -----------------------------------------------------------------------------------------------


def test_8_deeply_nested_json_is_a_400(served):
    deep_list = b"[" * 100_000 + b"]" * 100_000
    deep_object = b'{"a":' * 100_000 + b"1" + b"}" * 100_000
    inside = b'{"model": "z-image", "prompt": "x", "options": ' + deep_list + b"}"
    just_over = json.dumps({"model": "z-image", "prompt": "x", "options": _nested(MAX_JSON_DEPTH)}).encode()
    with served.http() as http:
        for path in ("/api/generate", "/api/show", "/v1/images/generations"):
            for body in (deep_list, deep_object, inside, just_over):
                assert_json_error(http.post(path, content=body), 400, "nested deeper")
        assert http.get("/api/version").status_code == 200


def _nested(depth: int):
    value: dict = {}
    for _ in range(depth):
        value = {"a": value}
    return value


# -- 9. the smaller ones ----------------------------------------------------------------------------------


def test_9_unwritable_outputs_fail_before_generating(side, tmp_path):
    listener = socket.socket(socket.AF_UNIX)
    sock_path = f"/tmp/oi-out-{os.getpid()}.sock"
    listener.bind(sock_path)
    try:
        for target in ("/proc/x.png", sock_path):
            result = side.cli("run", "z-image", "a fox", "-o", target)
            assert result.returncode == 1, result.stderr
            assert result.stderr.startswith(f"Error: cannot save to {target}"), result.stderr
        assert side.engine_pid() is None  # nothing was started, nothing generated
    finally:
        listener.close()
        os.unlink(sock_path)


def test_9_a_client_leaving_mid_body_is_one_quiet_line(served):
    before = len(served.log())
    raw_request(
        served.port,
        b"POST /api/generate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 5000\r\n\r\n{",
        read=False,
    )
    with served.http() as http:
        assert http.get("/api/version").status_code == 200
    time.sleep(0.5)
    added = served.log()[before:]
    assert "disconnected before sending its whole body" in added
    assert "ERROR" not in added and "Traceback" not in added, added


def test_9_list_into_a_closed_pipe_ends_quietly(world):
    for args in (("list",), ("show", "z-image"), ("--help",)):
        process = world.popen(*args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        process.stdout.close()  # the reader left before the first line, as `| head -0` would
        _, err = process.communicate(timeout=60)
        assert (process.returncode, err) == (0, b""), (args, err)


def test_9_run_refuses_an_engine_on_another_store(served, world, tmp_path):
    other = dict(world.env, OLLAMA_IMG_MODELS=str(tmp_path / "other-store"))
    result = subprocess.run(
        world.command("run", "z-image", "a fox", "--size", "32x32", "--steps", "1"),
        env=other,
        cwd=world.work,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert str(tmp_path / "other-store") in result.stderr and world.env["OLLAMA_IMG_MODELS"] in result.stderr


# -- fuzz ------------------------------------------------------------------------------------------------------


ROUTES = [
    ("POST", "/api/generate"),
    ("POST", "/v1/images/generations"),
    ("POST", "/v1/images/edits"),
    ("POST", "/api/show"),
    ("GET", "/api/ps"),
    ("GET", "/api/tags"),
    ("GET", "/api/version"),
    ("GET", "/v1/models"),
    ("GET", "/"),
    ("HEAD", "/"),
]
FIELDS = [
    "model", "prompt", "negative_prompt", "width", "height", "size", "steps", "seed", "guidance", "n",
    "keep_alive", "stream", "options", "teacache", "response_format", "output_format", "name", "image",
    "images", "mask", "strength", "loras", "raw_images",
]  # fmt: skip


def _hostile_value(rng: random.Random, depth: int = 0):
    """A JSON value of a wrong type, size, range or encoding; never a valid large size or step count
    (those would only make the fuzz slow, not find anything)."""
    choices = [
        None, True, False, 0, -1, 1, 3, 16, 17, 10_001, 2**31, 2**63, -(2**63), 10**400, 1e308, -1e308, 0.5,
        "", " ", "x", "NaN", "Infinity", "-1", "1e9", "32x32", "0x0", "99999x99999", "5m", "-1", "z-image",
        "z-image:latest", "../../etc/passwd", "/tmp", "\u0000", "\ud83d\ude00" * 50, "\u202e\u200b", "é" * 1000,
        "a" * (MAX_PROMPT_CHARS + 1), [], {}, [1, 2], {"a": 1},
        [{"digest": "sha256:" + "0" * 64, "scale": 1e308}], [{"digest": "/etc/passwd"}], [{"path": "/tmp/a"}],
        [{"digest": "sha256:" + "a" * 64}] * 100,
    ]  # fmt: skip
    if depth < 3 and rng.random() < 0.15:
        return [_hostile_value(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    if depth < 3 and rng.random() < 0.1:
        return {rng.choice(FIELDS): _hostile_value(rng, depth + 1)}
    return rng.choice(choices)


def _fuzz_request(rng: random.Random, method: str, path: str) -> dict:
    """httpx.request kwargs: a malformed body, header, query or method for the route."""
    kind = rng.randrange(10)
    openai = {"model": "z-image", "prompt": "x", "size": "32x32", "steps": 1}
    if path == "/v1/images/edits":
        openai["image"] = _small_png()
    base = openai if path.startswith("/v1/") else dict(TINY)
    if kind <= 3:  # the right shape, fields of the wrong kind
        body = dict(base)
        for _ in range(rng.randint(1, 3)):
            body[rng.choice(FIELDS)] = _hostile_value(rng)
        return {"content": json.dumps(body).encode()}
    if kind == 4:  # not an object at all
        return {"content": json.dumps(_hostile_value(rng)).encode()}
    if kind == 5:  # bytes that are not JSON, or not UTF-8
        raw = [
            b"", b"{", b"}", b"{'model': 1}", b"\xff\xfe{\x00}\x00", b'{"model": "\xc3\x28"}', b"\x00" * 100,
            b'{"model": "z-image", "prompt": "x"', json.dumps(base).encode("utf-16"), b"\xef\xbb\xbf{}",
            b"[" * 5000, b'{"a": ' * 2000 + b"1" + b"}" * 2000, b"1" * 5000, b'"' + b"\\u" * 100 + b'"',
        ]  # fmt: skip
        return {"content": rng.choice(raw)}
    if kind == 6:  # odd headers and content types
        headers = rng.choice(
            [
                {"content-type": "text/plain"},
                {"content-type": "multipart/form-data; boundary=x"},
                {"content-type": "application/json; charset=latin-1"},
                {"content-encoding": "gzip"},
                {"transfer-encoding": "chunked"},
                {"x-" + "h" * 200: "v" * 2000},
                {"host": "localhost"},
                {"origin": "http://localhost:8080"},
            ]
        )
        return {"content": json.dumps(base).encode(), "headers": headers}
    if kind == 7:  # big bodies: many fields, long strings, long lists
        body = dict(base)
        body.update({f"f{i}": "v" * rng.randint(1, 100) for i in range(rng.randint(100, 1000))})
        body[rng.choice(FIELDS)] = ["x"] * rng.randint(1000, 20_000)
        return {"content": json.dumps(body).encode()}
    if kind == 8:  # queries and paths
        value = (
            str(_hostile_value(rng))[:200].encode("utf-8", "replace").decode()
        )  # a URL holds no surrogates
        return {"params": {rng.choice(FIELDS): value}, "content": b"{}"}
    return {
        "method": rng.choice(["PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "GET", "POST"]),
        "content": b"x",
    }


@functools.cache
def _small_png() -> str:
    """A 32x32 PNG as base64: the start image of the edit requests the fuzz mangles."""
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 80, 40)).save(out, format="PNG")
    return base64.b64encode(out.getvalue()).decode()


def _acceptable(response: httpx.Response) -> bool:
    """A 2xx, or a 4xx with a JSON error; a 2xx stream may end with an error line (a failed job)."""
    if response.request.method == "HEAD":
        return response.status_code < 500
    if 200 <= response.status_code < 300:
        if response.headers.get("content-type", "").startswith("application/x-ndjson"):
            last = json.loads(response.text.strip().splitlines()[-1])
            return last.get("done") is True or isinstance(last.get("error"), str)
        return True
    if not 400 <= response.status_code < 500:
        return False
    error = response.json().get("error")
    return isinstance(error, str) or isinstance(error, dict) and isinstance(error.get("message"), str)


def test_fuzz_every_route_gets_4xx_json_or_success(served):
    rng = random.Random(9)
    counts = {}
    with served.http(timeout=120) as http:
        for method, path in ROUTES:
            started = time.monotonic()
            for i in range(200):
                kw = _fuzz_request(rng, method, path)
                response = http.request(kw.pop("method", method), path, **kw)
                assert _acceptable(response), (method, path, i, kw, response.status_code, response.text[:300])
                counts[response.status_code] = counts.get(response.status_code, 0) + 1
            print(f"fuzz {method} {path}: {time.monotonic() - started:.1f}s")
        for garbage in (
            b"GARBAGE\r\n\r\n",
            b"GET / HTTP/9.9\r\n\r\n",
            b"GET /" + b"a" * 100_000 + b" HTTP/1.1\r\n\r\n",
            b"POST /api/generate HTTP/1.1\r\nContent-Length: -5\r\n\r\n",
            b"POST /api/generate HTTP/1.1\r\nContent-Length: abc\r\n\r\n",
            b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * 5000 + b"\r\n",
            b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03",  # a TLS hello
        ):
            raw = raw_request(served.port, garbage)
            if raw and status_of(raw) >= 300:  # some are closed without a word, or understood (HTTP/9.9)
                assert 400 <= status_of(raw) < 500, raw[:200]
                assert "error" in json.loads(raw.split(b"\r\n\r\n", 1)[1])
        assert http.get("/api/version").status_code == 200
    assert sum(counts.values()) >= 200 * len(ROUTES)
    assert " ERROR " not in served.log() and "Traceback" not in served.log(), served.log()[-3000:]
    print(f"fuzz: {sum(counts.values())} requests, answers by status: {dict(sorted(counts.items()))}")


# -- soak ------------------------------------------------------------------------------------------------------


def _rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads the engine's RSS from /proc")
def test_soak_300_generations_at_flat_memory(served):
    pid = served.process.pid
    samples = []
    with served.http() as http:
        for i in range(300):
            body = {**TINY, "seed": i, "prompt": f"a fox number {i}", "stream": False}
            response = http.post("/api/generate", json=body)
            assert response.status_code == 200, response.text[:300]
            if i >= 50 and i % 10 == 0:
                samples.append(_rss_bytes(pid))
    baseline, peak = samples[0], max(samples)
    print(
        f"soak: RSS after 50 warm-up generations {baseline / 2**20:.1f} MiB, peak over the next 250 {peak / 2**20:.1f} MiB"
    )
    assert peak <= baseline * 1.10, [s // 2**20 for s in samples]
