"""Serve the API on every listener, each its own uvicorn server in one event loop, and stop in order.

One server per listener gives each its own connection cap and counts, so a TCP flood never takes what
the Unix socket (the CLI's way in) needs, and lets the TCP one alone check Host and Origin. The scheduler
lives once, here, outside the servers. On SIGTERM or SIGINT the engine first cancels the running job at
its next step (its client is told the engine is shutting down) and waits for the device worker to be
free, then closes the listeners and frees the models: no thread is left inside MLX when the process
exits (that aborted it: "terminate called without an active exception", exit 134). A second signal
exits at once.
"""

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass

from ollama_img.engine.limits import HEADER_TIMEOUT, KEEP_ALIVE_TIMEOUT

log = logging.getLogger("ollama_img.engine")

DRAIN_TIMEOUT = 60.0  # seconds the device worker gets to reach a step boundary before the engine gives up
CLOSE_TIMEOUT = 5.0  # seconds the listeners get to finish answering after the jobs ended


@dataclass
class Listener:
    """A listening socket and the ASGI app that answers on it."""

    name: str  # "unix" or "tcp", for the log
    sock: object
    app: Callable
    max_connections: int


def _server(listener: Listener):
    import uvicorn

    from ollama_img.engine.connections import protocol_for

    class ListenerServer(uvicorn.Server):
        """uvicorn's server; signals are the engine's business (`serve_all`), not each server's."""

        @contextlib.contextmanager
        def capture_signals(self):
            yield

    config = uvicorn.Config(
        listener.app,
        http=protocol_for(
            listener.name, max_connections=listener.max_connections, header_timeout=HEADER_TIMEOUT
        ),
        lifespan="off",
        ws="none",  # no WebSocket routes: an Upgrade request is answered as plain HTTP
        log_config=None,
        proxy_headers=False,  # nothing sits in front of the engine: X-Forwarded-* would be a client's lie
        timeout_keep_alive=KEEP_ALIVE_TIMEOUT,
        timeout_graceful_shutdown=CLOSE_TIMEOUT,
    )
    return ListenerServer(config)


async def serve_all(listeners: list[Listener], scheduler, *, idle_exit: float | None = None, activity=None):
    """Serve until SIGINT/SIGTERM (or `idle_exit` seconds of idleness), then shut down in order."""
    from ollama_img.engine.server import watch_idle

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signals = []

    def stop_from_loop(signum):
        log.info("%s: shutting down", signal.Signals(signum).name)
        stop.set()

    def on_signal(signum, _frame):
        signals.append(signum)
        if len(signals) > 1:
            os.write(2, f"second {signal.Signals(signum).name}: exiting now\n".encode())
            os._exit(1)
        loop.call_soon_threadsafe(stop_from_loop, signum)  # log and stop from the loop, not the handler

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    servers = [_server(listener) for listener in listeners]
    scheduler.start()
    watcher = None
    if idle_exit is not None and activity is not None:
        watcher = asyncio.create_task(watch_idle(scheduler, activity, idle_exit, stop.set))
    tasks = [
        asyncio.create_task(s.serve(sockets=[lst.sock])) for s, lst in zip(servers, listeners, strict=True)
    ]
    try:
        ended = asyncio.ensure_future(asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED))
        asked = asyncio.ensure_future(stop.wait())
        await asyncio.wait({ended, asked}, return_when=asyncio.FIRST_COMPLETED)
        asked.cancel()
        if not await scheduler.drain(DRAIN_TIMEOUT):
            log.error("the device is still busy after %g s; exiting without waiting for it", DRAIN_TIMEOUT)
            os._exit(1)
        for server in servers:
            server.should_exit = True
        await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        if watcher is not None:
            watcher.cancel()
        await scheduler.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
