"""Where `serve` listens on TCP: `OLLAMA_IMG_HOST` / `--host`, spelled like ollama's OLLAMA_HOST.

Accepted: "127.0.0.1:11434", "0.0.0.0", ":8080", "localhost:9000", "[::1]:11434", "http://host:port".
Loopback by default: the API has no authentication.
"""

import errno
import os
import socket
from urllib.parse import urlsplit

from ollama_img.errors import UserError

HOST_ENV = "OLLAMA_IMG_HOST"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 11434


def parse_host(text: str | None) -> tuple[str, int]:
    """(host, port) from a user's spelling; missing parts take the defaults."""
    raw = (text or "").strip()
    if not raw:
        return DEFAULT_HOST, DEFAULT_PORT
    if "://" not in raw:
        raw = "http://" + raw
    try:
        parts = urlsplit(raw)
        port = parts.port
    except ValueError as exc:
        raise UserError(f"invalid host {text!r}: {exc}") from None
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise UserError(f"invalid host {text!r}: expected HOST[:PORT]")
    host = parts.hostname or DEFAULT_HOST
    return host, DEFAULT_PORT if port is None else port


def default_host() -> tuple[str, int]:
    return parse_host(os.environ.get(HOST_ENV))


# uvicorn's own default; it listens again with it when it starts serving the socket
LISTEN_BACKLOG = 2048


def bind_tcp(host: str, port: int) -> socket.socket:
    """A listening TCP socket, or one clear line saying why not (port taken, unknown host)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise UserError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    family, _, proto, _, address = infos[0]
    # The protocol number matters: asyncio turns Nagle's algorithm off (TCP_NODELAY) only on sockets that
    # say IPPROTO_TCP, and with it on every answer waited 40 ms for the client's delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise UserError(
                f"cannot listen on {host}:{port}: the address is in use (is ollama or another server running "
                f"there?); choose another with --host or {HOST_ENV}"
            ) from None
        raise UserError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.listen(LISTEN_BACKLOG)  # connections queue from now on, before the server's loop takes them
    sock.setblocking(False)
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
