"""What stands between a listener and the API: bounded bodies everywhere; Host and Origin checks on TCP.

The Unix socket is the user's alone (0600 in a 0700 folder), so any Host its clients send is fine. The
TCP listener is reachable by every web page the user visits: a page may POST `text/plain` to
127.0.0.1:11434 without a CORS preflight, and DNS rebinding gives it a name that resolves there. So, as
ollama does, a loopback listener answers only Host names that mean this machine, and any listener
answers a cross-origin request only from an allowed origin (`OLLAMA_IMG_ORIGINS` plus local pages and
app shells), with a proper CORS preflight; the rest get a 403 with a JSON error.
"""

import asyncio
import ipaddress
import json
import logging
import os
import re
import socket
from collections.abc import Iterable

from ollama_img.engine.limits import BODY_IDLE_TIMEOUT, MAX_BODY_BYTES

log = logging.getLogger("ollama_img.engine")

ORIGINS_ENV = "OLLAMA_IMG_ORIGINS"
# Pages served by this machine, on any port, and desktop-app shells: what ollama allows by default.
DEFAULT_ORIGINS = tuple(
    f"{scheme}://{host}{port}"
    for host in ("localhost", "127.0.0.1", "0.0.0.0")
    for scheme in ("http", "https")
    for port in ("", ":*")
) + ("app://*", "file://*", "tauri://*")
# Request headers a page may send cross-origin (ollama's list: the OpenAI SDKs send the x-stainless ones).
ALLOWED_HEADERS = (
    "Authorization, Content-Type, User-Agent, Accept, X-Requested-With, OpenAI-Beta, x-stainless-arch, "
    "x-stainless-async, x-stainless-custom-poll-interval, x-stainless-helper-method, x-stainless-lang, "
    "x-stainless-os, x-stainless-package-version, x-stainless-poll-helper, x-stainless-retry-count, "
    "x-stainless-runtime, x-stainless-runtime-version, x-stainless-timeout"
)
ALLOWED_METHODS = "GET, POST, PUT, PATCH, DELETE, HEAD, OPTIONS"
PREFLIGHT_MAX_AGE = "43200"  # seconds a browser may cache a preflight answer (12 h, as gin-contrib/cors)
LOCAL_SUFFIXES = (".localhost", ".local", ".internal")
LISTENER_KEY = "ollama_img.listener"  # scope key: "unix" or "tcp"


# -- answering from middleware ---------------------------------------------------------------------


def _error_body(path: str, message: str, status: int) -> bytes:
    if path.startswith("/v1/"):  # OpenAI's shape, so OpenAI clients show the message
        from ollama_img.engine.openai_api import error_body

        return json.dumps(error_body(message, status)).encode()
    return json.dumps({"error": message}).encode()


async def send_error(scope, send, status: int, message: str, *, close: bool = False, headers=()):
    """A complete JSON error response, sent straight from the ASGI layer."""
    body = _error_body(scope.get("path", ""), message, status)
    raw_headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *headers,
    ]
    if close:
        raw_headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": body})


# -- request bodies (every listener) ---------------------------------------------------------------


class BodyLimit:
    """Read each request's body before the app sees it, refusing more than `limit` bytes while reading.

    A declared Content-Length over the limit is refused before a byte is read; a streamed body is cut
    off as soon as it passes the limit (413). A body that stalls is dropped (408), and a client that
    disconnects mid-body is noted in one line: there is nobody left to answer. The app then reads the
    body from memory, and later `receive` calls (waiting for a disconnect) go to the connection.
    """

    def __init__(self, app, *, limit: int = MAX_BODY_BYTES, idle_timeout: float = BODY_IDLE_TIMEOUT):
        self.app, self.limit, self.idle_timeout = app, limit, idle_timeout

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = _header(scope, b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            return await self._too_large(scope, send, declared)
        chunks, size = [], 0
        while True:
            try:
                message = await asyncio.wait_for(receive(), self.idle_timeout)
            except TimeoutError:
                log.info(
                    "%s %s: the body stalled for %g s; dropped",
                    scope["method"],
                    scope["path"],
                    self.idle_timeout,
                )
                return await send_error(scope, send, 408, "request body timed out", close=True)
            if message["type"] == "http.disconnect":
                log.info(
                    "%s %s: the client disconnected before sending its whole body",
                    scope["method"],
                    scope["path"],
                )
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                return await self._too_large(scope, send, None)
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)

    async def _too_large(self, scope, send, declared: str | None):
        if declared is not None and not declared.isdigit():
            return await send_error(scope, send, 400, f"invalid Content-Length {declared!r}", close=True)
        mib = self.limit / 2**20
        return await send_error(
            scope, send, 413, f"request body too large: at most {self.limit} bytes ({mib:g} MiB)", close=True
        )


def _header(scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return value.decode("latin-1").strip()
    return None


# -- Host and Origin (TCP) -------------------------------------------------------------------------


def allowed_origins(env: str | None = None) -> tuple[str, ...]:
    """OLLAMA_IMG_ORIGINS (comma-separated patterns, `*` matching anything) plus the defaults."""
    raw = os.environ.get(ORIGINS_ENV, "") if env is None else env
    extra = tuple(part.strip() for part in raw.split(",") if part.strip())
    return extra + DEFAULT_ORIGINS


def _origin_pattern(patterns: Iterable[str]) -> re.Pattern:
    alternatives = "|".join(".*".join(re.escape(piece) for piece in p.lower().split("*")) for p in patterns)
    return re.compile(f"(?:{alternatives})")


def is_local_host(host: str) -> bool:
    """Whether a Host header's name means this machine (ollama's rule): no name, localhost and its
    subdomains, .local and .internal names, this machine's hostname, or a loopback, private,
    link-local or unspecified address."""
    name = host.lower().rstrip(".")
    if name in ("", "localhost") or name.endswith(LOCAL_SUFFIXES) or name == socket.gethostname().lower():
        return True
    try:
        address = ipaddress.ip_address(name.strip("[]"))
    except ValueError:
        return False
    return address.is_loopback or address.is_private or address.is_link_local or address.is_unspecified


def split_host(header: str) -> str:
    """The name of a Host header, without its port ("[::1]:11434" -> "[::1]", "a:80" -> "a")."""
    if header.startswith("["):
        return header[: header.find("]") + 1] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def is_loopback_listener(bound: str) -> bool:
    """Whether a listening address is loopback only (then Host names are checked, as ollama does)."""
    try:
        return ipaddress.ip_address(bound.strip("[]")).is_loopback
    except ValueError:
        return bound.lower() == "localhost"


class TcpGuard:
    """Host check (loopback listeners) and CORS with an origin allow-list (every TCP listener)."""

    def __init__(self, app, *, bound: str, origins: Iterable[str] | None = None):
        self.app = app
        self.check_host = is_loopback_listener(bound)
        patterns = tuple(allowed_origins() if origins is None else origins)
        self.any_origin = "*" in patterns
        self.origins = _origin_pattern(patterns)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        scope = {**scope, LISTENER_KEY: "tcp"}
        host = _header(scope, b"host") or ""
        if self.check_host and not is_local_host(split_host(host)):
            log.info("refused %s %s for Host %r", scope["method"], scope["path"], host[:100])
            return await send_error(scope, send, 403, f"host {host[:100]!r} is not allowed", close=True)
        origin = _header(scope, b"origin")
        if origin is None or origin.lower() in (f"http://{host}".lower(), f"https://{host}".lower()):
            return await self.app(scope, receive, send)  # not cross-origin
        if not (self.any_origin or self.origins.fullmatch(origin.lower())):
            log.info("refused %s %s from origin %r", scope["method"], scope["path"], origin[:100])
            return await send_error(
                scope,
                send,
                403,
                f"origin {origin[:100]!r} is not allowed (set {ORIGINS_ENV} to allow it)",
                close=True,
            )
        cors = [(b"access-control-allow-origin", origin.encode("latin-1")), (b"vary", b"Origin")]
        if scope["method"] == "OPTIONS" and _header(scope, b"access-control-request-method"):
            headers = [
                *cors,
                (b"access-control-allow-methods", ALLOWED_METHODS.encode()),
                (b"access-control-allow-headers", ALLOWED_HEADERS.encode()),
                (b"access-control-max-age", PREFLIGHT_MAX_AGE.encode()),
                (b"content-length", b"0"),
            ]
            await send({"type": "http.response.start", "status": 204, "headers": headers})
            return await send({"type": "http.response.body", "body": b""})

        async def with_cors(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", ()), *cors]}
            await send(message)

        return await self.app(scope, receive, with_cors)


class SocketMark:
    """Marks requests that came over the Unix socket (the CLI's channel, the user's alone)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            scope = {**scope, LISTENER_KEY: "unix"}
        return await self.app(scope, receive, send)


def over_unix_socket(scope) -> bool:
    return scope.get(LISTENER_KEY) == "unix"
