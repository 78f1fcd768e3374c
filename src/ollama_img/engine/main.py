"""Run the engine: take the one-engine-per-user lock, listen, serve until stopped or idle.

`ollama-img serve` runs this in the foreground (socket + TCP, never exits by itself); the engine that
`run` spawns is `python -m ollama_img.engine` (socket only, exits after OLLAMA_IMG_IDLE_EXIT seconds with
nothing loaded).
"""

import logging
import os
import sys
import time

_IMPORTED = time.perf_counter()  # about when the process started: the engine's start-up is timed from here

from ollama_img import __version__  # noqa: E402 (the clock starts first)
from ollama_img.engine import runtime  # noqa: E402 (the clock starts first)
from ollama_img.errors import UserError  # noqa: E402 (the clock starts first)

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
    from ollama_img.engine.log_limit import RepeatLimit

    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )
    for handler in logging.getLogger().handlers:
        handler.addFilter(RepeatLimit())  # floods (refused connections, accept errors) cannot fill the log


def run_engine(*, tcp: tuple[str, int] | None = None, idle_exit: float | None = None, gpu_memory=None):
    """Serve until SIGINT/SIGTERM, or until idle for `idle_exit` seconds. UserError if it cannot start.

    `gpu_memory` (a `memory.budget.Budget`) is the memory the engine plans within; None: the
    OLLAMA_IMG_GPU_MEMORY variable, else what the device has free."""
    import asyncio

    from ollama_img import priming
    from ollama_img.backend import processor_name
    from ollama_img.engine import guard
    from ollama_img.engine.connections import connection_caps, raise_open_files_limit
    from ollama_img.engine.limits import MAX_SOCKET_CONNECTIONS, MAX_TCP_CONNECTIONS
    from ollama_img.engine.listen import bind_tcp, url_of
    from ollama_img.engine.scheduler import Scheduler
    from ollama_img.engine.server import create_app
    from ollama_img.engine.serving import Listener, serve_all
    from ollama_img.keepalive import default_keepalive
    from ollama_img.memory.budget import user_budget

    imported = time.perf_counter() - _IMPORTED
    keepalive = default_keepalive()
    gpu_memory = gpu_memory or user_budget()  # a malformed variable stops the start, in one line
    priming.policy()  # OLLAMA_IMG_PRIME, likewise
    max_loaded = max_loaded_from_env()
    processor = processor_name()  # also fails early, and clearly, when MLX has no back end
    mlx_ready = time.perf_counter() - _IMPORTED
    runtime.ensure_private_dir(runtime.socket_path().parent)
    lock = runtime.PidLock(runtime.pid_path())
    lock.acquire()
    _dump_stacks_on_signal()
    _log_compile_caches()
    unix = None
    try:
        unix = runtime.UnixListener(runtime.socket_path())  # removed on the way out, even when TCP fails
        tcp_sock = bind_tcp(*tcp) if tcp is not None else None
        open_files = raise_open_files_limit()
        tcp_cap, socket_cap = connection_caps(open_files, MAX_TCP_CONNECTIONS, MAX_SOCKET_CONNECTIONS)
        scheduler = Scheduler(default_keepalive=keepalive, max_loaded=max_loaded, gpu_memory=gpu_memory)
        app = create_app(scheduler, processor=processor)
        bodies = guard.BodyLimit(app)
        listeners = [Listener("unix", unix.sock, guard.SocketMark(bodies), socket_cap)]
        where = [f"unix:{unix.path}"]
        if tcp_sock is not None:
            bound = tcp_sock.getsockname()[0]
            listeners.append(Listener("tcp", tcp_sock, guard.TcpGuard(bodies, bound=bound), tcp_cap))
            where.append(url_of(tcp_sock))
        log.info(
            "ollama-img %s engine (pid %d) listening on %s; %s; keep-alive %s s; idle exit %s; memory %s; "
            "up in %.2f s (modules imported after %.2f s, MLX after %.2f s)",
            __version__,
            os.getpid(),
            " and ".join(where),
            processor,
            keepalive,
            "off" if idle_exit is None else f"{idle_exit:g} s",
            gpu_memory.describe() if gpu_memory else "what the device has free",
            time.perf_counter() - _IMPORTED,
            imported,
            mlx_ready,
        )
        log.info(
            "limits: %d socket and %d TCP connections, %d open files",
            socket_cap,
            tcp_cap if tcp else 0,
            open_files,
        )
        asyncio.run(serve_all(listeners, scheduler, idle_exit=idle_exit, activity=app.state.activity))
    finally:
        if unix is not None:
            unix.remove()
        lock.release()


def _dump_stacks_on_signal():
    """`kill -USR1 PID` writes every thread's Python stack to the engine log (stderr) and the engine goes
    on: what a busy or stuck engine is doing, seen without stopping it. A Python-level handler (run by
    the main thread, under the GIL): faulthandler's C-level dump of other threads while they run crashed
    the engine once in 67 signals on a GPU."""
    import signal

    if hasattr(signal, "SIGUSR1"):
        signal.signal(signal.SIGUSR1, _write_stacks)


def _write_stacks(_signum, _frame):
    import threading
    import traceback

    names = {t.ident: t.name for t in threading.enumerate()}
    parts = ["--- thread stacks (SIGUSR1)\n"]
    for ident, frame in sys._current_frames().items():
        parts.append(f"Thread {names.get(ident, '?')} ({ident:#x}), most recent call last:\n")
        parts.extend(traceback.format_stack(frame))
    sys.stderr.write("".join(parts) + "\n")
    sys.stderr.flush()


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
