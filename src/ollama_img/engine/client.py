"""Talk to the engine over its Unix socket, streaming NDJSON progress events.

Errors the engine reports come back as UserError (NotFound for 404) carrying its message, so the CLI
prints one line; a connection lost mid-way says so and points to the engine's log. The transport is the
standard library's (`unix_http`): `ps` and `stop` must start fast.
"""

import contextlib
import http.client
import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path

from ollama_img.engine import raw_images, runtime, spawn
from ollama_img.engine.unix_http import TRANSPORT_ERRORS, ConnectFailed, answer_on, exchange
from ollama_img.errors import NotFound, UserError


def _error_from(status: int, body: bytes) -> UserError:
    try:
        message = json.loads(body).get("error")
        if isinstance(message, dict):
            message = message.get("message")
    except (ValueError, AttributeError):
        message = None
    message = message or f"the engine answered HTTP {status}"
    if status == 404:
        return NotFound(message)
    if status >= 500:
        return UserError(f"{message} (engine log: {runtime.log_path()})")
    return UserError(message)


class EngineUnavailable(UserError):
    """Nothing accepted the connection: the engine exited (idle) between finding it and asking it."""


def _lost(exc: Exception) -> UserError:
    if isinstance(exc, ConnectFailed):
        return EngineUnavailable(f"cannot connect to the engine ({exc}); see its log: {runtime.log_path()}")
    return UserError(f"lost the connection to the engine ({exc}); see its log: {runtime.log_path()}")


class EngineClient:
    def __init__(self, sock: Path):
        self.sock = sock

    def close(self):
        """Nothing to release: each request has its own connection."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _json(self, method: str, path: str, body: dict | None = None) -> dict:
        try:
            with exchange(self.sock, method, path, body) as response:
                data = response.read()
                status = response.status
        except TRANSPORT_ERRORS as exc:
            raise _lost(exc) from None
        if status != 200:
            raise _error_from(status, data)
        return json.loads(data)

    def version(self) -> str:
        return self._json("GET", "/api/version")["version"]

    def check_store(self, root: Path):
        """Refuse to go on when the engine serves another model store than `root` (this process's
        OLLAMA_IMG_MODELS): it would silently use that store's models."""
        served = self._json("GET", "/api/version").get("models")
        if served is None or os.path.realpath(served) == os.path.realpath(root):
            return
        pid = runtime.running_engine_pid()
        raise UserError(
            f"the running engine{f' (pid {pid})' if pid else ''} uses the model store {served}, not {root}; "
            "end it first (it exits by itself after 5 idle minutes with nothing loaded) or use its store"
        )

    def ps(self) -> list[dict]:
        return self._json("GET", "/api/ps")["models"]

    def stop(self, model: str) -> dict:
        return self._json("POST", "/api/generate", {"model": model, "keep_alive": 0, "stream": False})

    def generate(self, body: dict, sent: socket.socket | None = None) -> Iterator[dict]:
        """Progress events, then the final object. Closing the iterator (Ctrl-C) cancels the job.

        `sent`: a connection on which this very request went out already (`cli.early_run`); its answer
        is read instead, unless the engine refused it, which asks again here (a model pulled since)."""
        try:
            with self._generate_response({**body, "stream": True}, sent) as response:
                if response.status != 200:
                    raise _error_from(response.status, response.read())
                # One line per event; the last one carries the PNGs (megabytes), read as one piece.
                for line in iter(response.readline, b""):
                    if not line.strip():
                        continue
                    event = json.loads(line)
                    if "error" in event:
                        raise UserError(event["error"])
                    if event.get("done") and raw_images.SIZES in event:
                        event["pngs"] = [_read_exactly(response, size) for size in event[raw_images.SIZES]]
                    yield event
                    if event.get("done"):
                        return
        except TRANSPORT_ERRORS as exc:
            raise _lost(exc) from None
        raise UserError(f"the engine ended the response without a result; see its log: {runtime.log_path()}")

    @contextlib.contextmanager
    def _generate_response(self, body: dict, sent: socket.socket | None):
        early = _accepted_answer(sent) if sent is not None else None
        if early is not None:
            try:
                yield early
            finally:
                early.close()
                sent.close()
            return
        with exchange(self.sock, "POST", "/api/generate", body) as response:
            yield response


def _read_exactly(response, size: int) -> bytes:
    """`size` bytes of the response; a shorter read is a transport error (the engine went away)."""
    data = response.read(size)
    if len(data) != size:
        raise http.client.IncompleteRead(data, size - len(data))
    return data


def _accepted_answer(sent: socket.socket):
    """The engine's answer on an early request's connection when it took the job; None (the connection
    closed) when it refused it or the exchange broke: the request is then asked again."""
    try:
        response = answer_on(sent, "POST")
    except TRANSPORT_ERRORS:
        sent.close()
        return None
    if response.status == 200:
        return response
    response.close()
    sent.close()
    return None


def connect(*, start: bool) -> EngineClient | None:
    """A client for the running engine; with `start`, spawn one if needed, else None when none runs."""
    sock = spawn.ensure_engine() if start else spawn.find_engine()
    return EngineClient(sock) if sock else None
