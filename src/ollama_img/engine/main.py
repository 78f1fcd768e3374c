"""Run the engine: take the one-engine-per-user lock, listen, serve until stopped or idle.

`ollama-img serve` runs this in the foreground (socket + TCP, never exits by itself); the engine that
`run` spawns is `python -m ollama_img.engine` (socket only, exits after OLLAMA_IMG_IDLE_EXIT seconds with
nothing loaded).
"""

import contextlib
import logging
import os
import signal
import sys

from ollama_img import __version__
from ollama_img.engine import runtime
from ollama_img.errors import UserError

log = logging.getLogger("ollama_img.engine")

IDLE_EXIT_ENV = "OLLAMA_IMG_IDLE_EXIT"
DEFAULT_IDLE_EXIT = 300.0
MAX_LOADED_ENV = "OLLAMA_IMG_MAX_LOADED_MODELS"


def idle_exit_from_env() -> float:
    raw = os.environ.get(IDLE_EXIT_ENV, "").strip()
    if not raw:
        return DEFAULT_IDLE_EXIT
    try:
        value = float(raw)
    except ValueError:
        raise UserError(f"{IDLE_EXIT_ENV} must be a number of seconds, got {raw!r}") from None
    return max(0.0, value)


def max_loaded_from_env() -> int:
    raw = os.environ.get(MAX_LOADED_ENV, "").strip()
    if not raw:
        return 1
    if not raw.isdigit() or int(raw) < 1:
        raise UserError(f"{MAX_LOADED_ENV} must be a whole number of at least 1, got {raw!r}")
    return int(raw)


def configure_logging():
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )


def _server_class():
    import uvicorn

    class EngineServer(uvicorn.Server):
        """uvicorn's server, minus re-raising SIGINT/SIGTERM after shutdown (uvicorn does that so the
        default handler kills the process), which would skip removing our socket file."""

        @contextlib.contextmanager
        def capture_signals(self):
            originals = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for sig, handler in originals.items():
                    signal.signal(sig, handler)

    return EngineServer


def run_engine(*, tcp: tuple[str, int] | None = None, idle_exit: float | None = None, gpu_memory=None):
    """Serve until SIGINT/SIGTERM, or until idle for `idle_exit` seconds. UserError if it cannot start.

    `gpu_memory` (a `memory.budget.Budget`) is the memory the engine plans within; None: the
    OLLAMA_IMG_GPU_MEMORY variable, else what the device has free."""
    import uvicorn

    from ollama_img.backend import processor_name
    from ollama_img.engine.listen import bind_tcp, url_of
    from ollama_img.engine.scheduler import Scheduler
    from ollama_img.engine.server import create_app
    from ollama_img.keepalive import default_keepalive
    from ollama_img.memory.budget import user_budget

    keepalive = default_keepalive()
    gpu_memory = gpu_memory or user_budget()  # a malformed variable stops the start, in one line
    max_loaded = max_loaded_from_env()
    processor = processor_name()  # also fails early, and clearly, when MLX has no back end
    runtime.ensure_private_dir(runtime.socket_path().parent)
    lock = runtime.PidLock(runtime.pid_path())
    lock.acquire()
    _log_compile_caches()
    listeners = []
    try:
        unix = runtime.UnixListener(runtime.socket_path())
        listeners.append(unix)  # removed on the way out, even when TCP cannot be bound
        sockets = [unix.sock]
        if tcp is not None:
            sockets.append(bind_tcp(*tcp))
        scheduler = Scheduler(default_keepalive=keepalive, max_loaded=max_loaded, gpu_memory=gpu_memory)

        def on_idle():  # called while serving, so `server` is set by then
            server.should_exit = True

        app = create_app(scheduler, processor=processor, idle_exit=idle_exit, on_idle=on_idle)
        config = uvicorn.Config(app, log_config=None, lifespan="on", timeout_graceful_shutdown=3)
        server = _server_class()(config)
        where = [f"unix:{unix.path}"] + [url_of(s) for s in sockets[1:]]
        log.info(
            "ollama-img %s engine (pid %d) listening on %s; %s; keep-alive %s s; idle exit %s; memory %s",
            __version__,
            os.getpid(),
            " and ".join(where),
            processor,
            keepalive,
            "off" if idle_exit is None else f"{idle_exit:g} s",
            gpu_memory.describe() if gpu_memory else "what the device has free",
        )
        server.run(sockets=sockets)
    finally:
        for listener in listeners:
            listener.remove()
        lock.release()


def _log_compile_caches():
    """Where the GPU kernels compiled by this engine are kept (set before MLX was imported: backend)."""
    from ollama_img import caches

    configured = caches.configure()
    if configured.settings or configured.kept:
        log.info(configured.describe())


def main():
    """`python -m ollama_img.engine`: the background engine that `run` spawns."""
    configure_logging()
    try:
        run_engine(idle_exit=idle_exit_from_env())
    except UserError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
