"""Talk to the engine over its Unix socket (httpx), streaming NDJSON progress events.

Errors the engine reports come back as UserError (NotFound for 404) carrying its message, so the CLI
prints one line; a connection lost mid-way says so and points to the engine's log.
"""

import json
from collections.abc import Iterator
from pathlib import Path

import httpx

from ollama_img.engine import runtime, spawn
from ollama_img.errors import NotFound, UserError

BASE_URL = "http://engine"


def _error_from(response: httpx.Response) -> UserError:
    try:
        message = response.json().get("error")
        if isinstance(message, dict):
            message = message.get("message")
    except (ValueError, AttributeError):
        message = None
    message = message or f"the engine answered HTTP {response.status_code}"
    if response.status_code == 404:
        return NotFound(message)
    if response.status_code >= 500:
        return UserError(f"{message} (engine log: {runtime.log_path()})")
    return UserError(message)


class EngineUnavailable(UserError):
    """Nothing accepted the connection: the engine exited (idle) between finding it and asking it."""


def _lost(exc: Exception) -> UserError:
    if isinstance(exc, httpx.ConnectError):
        return EngineUnavailable(f"cannot connect to the engine ({exc}); see its log: {runtime.log_path()}")
    return UserError(f"lost the connection to the engine ({exc}); see its log: {runtime.log_path()}")


class EngineClient:
    def __init__(self, sock: Path):
        self.sock = sock
        self._http = httpx.Client(
            transport=httpx.HTTPTransport(uds=str(sock)),
            base_url=BASE_URL,
            timeout=httpx.Timeout(30.0, read=None),  # generation takes as long as it takes
        )

    def close(self):
        self._http.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _json(self, method: str, path: str, **kwargs) -> dict:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise _lost(exc) from None
        if response.status_code != 200:
            raise _error_from(response)
        return response.json()

    def version(self) -> str:
        return self._json("GET", "/api/version")["version"]

    def ps(self) -> list[dict]:
        return self._json("GET", "/api/ps")["models"]

    def stop(self, model: str) -> dict:
        return self._json("POST", "/api/generate", json={"model": model, "keep_alive": 0, "stream": False})

    def generate(self, body: dict) -> Iterator[dict]:
        """Progress events, then the final object. Closing the iterator (Ctrl-C) cancels the job."""
        try:
            with self._http.stream("POST", "/api/generate", json={**body, "stream": True}) as response:
                if response.status_code != 200:
                    response.read()
                    raise _error_from(response)
                for line in response.iter_lines():
                    if not line.strip():
                        continue
                    event = json.loads(line)
                    if "error" in event:
                        raise UserError(event["error"])
                    yield event
                    if event.get("done"):
                        return
        except httpx.TransportError as exc:
            raise _lost(exc) from None
        raise UserError(f"the engine ended the response without a result; see its log: {runtime.log_path()}")


def connect(*, start: bool) -> EngineClient | None:
    """A client for the running engine; with `start`, spawn one if needed, else None when none runs."""
    sock = spawn.ensure_engine() if start else spawn.find_engine()
    return EngineClient(sock) if sock else None
