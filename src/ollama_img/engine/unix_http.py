"""HTTP/1.1 to the engine over its Unix socket, with the standard library's http.client.

The CLI only ever talks to its own engine: a JSON request, then a JSON answer or an NDJSON stream.
httpx (with h11, anyio, certifi and idna) takes a tenth of a second to import on a small machine, more
than `ollama-img ps` may take in all; http.client is most of the way there already.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
from collections.abc import Iterator
from pathlib import Path

CONNECT_TIMEOUT = 30.0


class UnixConnection(http.client.HTTPConnection):
    """An HTTPConnection whose transport is a Unix socket; `timeout` covers connecting and sending."""

    def __init__(self, path: Path | str, timeout: float = CONNECT_TIMEOUT):
        super().__init__("engine", timeout=timeout)
        self.path = str(path)

    def connect(self):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.path)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


class ConnectFailed(OSError):
    """Nothing accepted the connection (no engine, or a socket left by one that died)."""


# What a broken exchange raises: a reset or closed socket, a cut-off response, a timeout.
TRANSPORT_ERRORS = (OSError, http.client.HTTPException)


@contextlib.contextmanager
def exchange(
    sock: Path | str,
    method: str,
    path: str,
    body: dict | None = None,
    *,
    timeout: float = CONNECT_TIMEOUT,
    read_timeout: float | None = None,
) -> Iterator[http.client.HTTPResponse]:
    """Send one request (a JSON body, if any); the response, its headers read, for the block.

    `read_timeout` None waits as long as the engine takes (a generation). ConnectFailed when nothing
    answers; one of TRANSPORT_ERRORS when the exchange breaks later. The connection closes with the block.
    """
    connection = UnixConnection(sock, timeout)
    try:
        try:
            connection.connect()
        except OSError as exc:
            raise ConnectFailed(exc.errno, f"{exc.strerror or exc} ({sock})") from None
        payload = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if payload is not None else {}
        connection.request(method, path, body=payload, headers=headers)
        connection.sock.settimeout(read_timeout)
        response = connection.getresponse()
        try:
            yield response
        finally:
            response.close()
    finally:
        connection.close()


def answer_on(sock: socket.socket, method: str) -> http.client.HTTPResponse:
    """The response to a request already sent on `sock` (by `cli.early_run`), its headers read; one of
    TRANSPORT_ERRORS when the exchange broke. Closing it and the socket is the caller's."""
    response = http.client.HTTPResponse(sock, method=method)
    try:
        response.begin()
    except BaseException:
        response.close()
        raise
    return response
