"""Find the running engine, or start one: detached, logging to a file, one per user.

Two `run`s starting at once take the spawn lock in turn: the first starts the engine and waits for it to
answer, the second then finds it answering. A socket left by a killed engine does not answer; the new
engine (holding the pid lock) replaces it.
"""

import os
import subprocess
import sys
import time
from pathlib import Path

from ollama_img.engine import runtime
from ollama_img.errors import UserError

START_TIMEOUT_ENV = "OLLAMA_IMG_ENGINE_START_TIMEOUT"
DEFAULT_START_TIMEOUT = 60.0
MAX_LOG_BYTES = 10_000_000
# Paths the engine reads from its environment: made absolute, since the engine runs from "/".
_PATH_VARS = (
    "OLLAMA_IMG_MODELS",
    "OLLAMA_IMG_RUNTIME_DIR",
    "OLLAMA_IMG_CACHE_DIR",
    "XDG_RUNTIME_DIR",
    "XDG_DATA_HOME",
    "XDG_STATE_HOME",
    "XDG_CACHE_HOME",
    "MLX_PTX_CACHE_DIR",
    "CUDA_CACHE_PATH",
)


def start_timeout() -> float:
    raw = os.environ.get(START_TIMEOUT_ENV, "").strip()
    try:
        return float(raw) if raw else DEFAULT_START_TIMEOUT
    except ValueError:
        raise UserError(f"{START_TIMEOUT_ENV} must be a number of seconds, got {raw!r}") from None


def is_answering(sock: Path, timeout: float = 2.0) -> bool:
    """True when an engine answers on `sock` (a connect that fails means none, or a stale socket)."""
    if not sock.exists():
        return False
    from ollama_img.engine.unix_http import TRANSPORT_ERRORS, exchange

    try:
        with exchange(sock, "GET", "/api/version", timeout=timeout, read_timeout=timeout) as response:
            response.read()
            return response.status == 200
    except TRANSPORT_ERRORS:
        return False


def find_engine() -> Path | None:
    """The socket of a running engine, or None. Never starts one (`ps`, `stop`)."""
    sock = runtime.socket_path()
    return sock if is_answering(sock) else None


def ensure_engine() -> Path:
    """The socket of a running engine, starting one if none answers."""
    sock = runtime.socket_path()
    if is_answering(sock):
        return sock
    from filelock import FileLock, Timeout  # imported here: `ps` and `stop` never start an engine

    runtime.ensure_private_dir(sock.parent)
    timeout = start_timeout()
    try:
        with FileLock(str(runtime.spawn_lock_path()), timeout=timeout + 10):
            if is_answering(sock) or _wait_for_running_engine(sock, timeout):
                return sock
            process = _start_process()
            _wait_until_ready(process, sock, timeout)
    except Timeout:
        raise UserError(
            f"timed out waiting for another ollama-img to start the engine; see its log: {runtime.log_path()}"
        ) from None
    return sock


def _wait_for_running_engine(sock: Path, timeout: float) -> bool:
    """An engine holds the pid lock but did not answer at once: it is alive and busy (a slow request),
    not gone, so wait for it rather than start a second one that would only find the lock taken.
    True once it answers; False when no engine holds the lock (any more)."""
    deadline = time.monotonic() + timeout
    while (pid := runtime.running_engine_pid()) is not None:
        if is_answering(sock, timeout=5.0):
            return True
        if time.monotonic() >= deadline:
            raise UserError(
                f"the engine (pid {pid}) is running but has not answered for {timeout:g} s; "
                f"see its log: {runtime.log_path()}"
            )
        time.sleep(0.2)
    return False


def _engine_env() -> dict:
    env = dict(os.environ)
    for name in _PATH_VARS:
        if env.get(name):
            env[name] = str(Path(env[name]).expanduser().absolute())
    return env


def _start_process() -> subprocess.Popen:
    log = runtime.log_path()
    log.parent.mkdir(parents=True, exist_ok=True)
    if log.exists() and log.stat().st_size > MAX_LOG_BYTES:
        log.replace(log.with_name(log.name + ".1"))
    with open(log, "ab") as out:
        out.write(f"--- starting engine at {time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode())
        out.flush()
        return subprocess.Popen(
            [sys.executable, "-m", "ollama_img.engine"],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd="/",
            env=_engine_env(),
            start_new_session=True,  # Ctrl-C in the terminal that started it must not reach it
            close_fds=True,
        )


def _wait_until_ready(process: subprocess.Popen, sock: Path, timeout: float):
    deadline = time.monotonic() + timeout
    delay = 0.02
    while time.monotonic() < deadline:
        if is_answering(sock):
            return
        code = process.poll()
        if code is not None:
            # Lost a race with an engine started by other means (`serve`): use that one.
            if is_answering(sock) or _wait_for_running_engine(sock, max(1.0, deadline - time.monotonic())):
                return
            raise UserError(
                f"the engine exited during start-up (exit code {code}): {_last_line(runtime.log_path())} "
                f"(full log: {runtime.log_path()})"
            )
        time.sleep(delay)
        delay = min(delay * 1.5, 0.05)  # asking is cheap; a late look costs the person the difference
    raise UserError(f"the engine did not answer within {timeout:g} s; see its log: {runtime.log_path()}")


def _last_line(path: Path) -> str:
    try:
        lines = [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return "(no log)"
    return lines[-1].removeprefix("Error: ") if lines else "(empty log)"
