"""Connections per listener: a cap, a deadline for request headers, and enough file descriptors.

uvicorn keeps every accepted connection open until its client closes it, with no deadline for the
first request's headers: 1100 idle TCP connections used up the default 1024 open files, and then the
engine could accept nothing, on TCP or on its socket, while asyncio logged a traceback per retry. Here
each listener (its own uvicorn server) holds at most `max_connections`; one more is answered 503 and
closed at once. A connection must send its request's headers within `header_timeout` seconds of
opening or of its previous answer, and the process raises its open-files limit at start.
"""

import contextlib
import json
import logging
import resource
import time

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from ollama_img.engine.limits import RESERVED_FILES, WANTED_OPEN_FILES

log = logging.getLogger("ollama_img.engine")

_BUSY_BODY = b'{"error": "too many connections to the engine; try again"}'
BUSY_RESPONSE = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nconnection: close\r\n"
    b"content-length: " + str(len(_BUSY_BODY)).encode() + b"\r\n\r\n" + _BUSY_BODY
)
REFUSAL_LOG_INTERVAL = 10.0  # seconds between two log lines about refused connections


class BoundedProtocol(H11Protocol):
    """uvicorn's h11 protocol with a connection cap and a header deadline (set by `protocol_for`)."""

    max_connections = 256
    header_timeout = 10.0
    listener = "?"
    _refused_since_log = 0
    _last_refusal_log = 0.0

    def connection_made(self, transport):
        self._deadline = None
        self._refused = len(self.connections) >= self.max_connections
        if self._refused:
            self.transport = transport
            transport.write(BUSY_RESPONSE)
            transport.close()
            self._note_refusal()
            return
        super().connection_made(transport)
        self._arm_deadline()

    def data_received(self, data: bytes):
        if not self._refused:
            super().data_received(data)

    def connection_lost(self, exc):
        if self._refused:
            return
        self._disarm_deadline()
        super().connection_lost(exc)

    def send_400_response(self, msg: str):
        """A request h11 cannot parse gets a JSON error like every other 4xx (uvicorn's is plain text)."""
        body = json.dumps({"error": f"invalid HTTP request: {msg}"}).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ]
        with contextlib.suppress(h11.LocalProtocolError):
            for event in (
                h11.Response(status_code=400, headers=headers, reason=b"Bad Request"),
                h11.Data(data=body),
                h11.EndOfMessage(),
            ):
                self.transport.write(self.conn.send(event))
        self.transport.close()

    def on_response_complete(self):
        super().on_response_complete()
        self._arm_deadline()  # the next request on this connection has the same time for its headers

    # -- the header deadline ---------------------------------------------------------------------

    def _arm_deadline(self):
        self._disarm_deadline()
        if not self.transport.is_closing():
            self._deadline = self.loop.call_later(self.header_timeout, self._on_deadline)

    def _disarm_deadline(self):
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _on_deadline(self):
        self._deadline = None
        if self.transport.is_closing() or (self.cycle is not None and not self.cycle.response_complete):
            return  # closed already, or its request arrived and is being answered (bodies: BodyLimit)
        with contextlib.suppress(h11.LocalProtocolError):  # half-way through a request line: just close
            self.conn.send(h11.ConnectionClosed())
        self.transport.close()

    # -- logging ---------------------------------------------------------------------------------

    @classmethod
    def _note_refusal(cls):
        """One log line per REFUSAL_LOG_INTERVAL however many connections are refused (floods)."""
        cls._refused_since_log += 1
        now = time.monotonic()
        if now - cls._last_refusal_log >= REFUSAL_LOG_INTERVAL:
            log.warning(
                "%s: %d connection(s) refused: %d open is the limit",
                cls.listener,
                cls._refused_since_log,
                cls.max_connections,
            )
            cls._last_refusal_log, cls._refused_since_log = now, 0


def protocol_for(listener: str, *, max_connections: int, header_timeout: float) -> type[BoundedProtocol]:
    """A protocol class for one listener, with its own cap (and its own refusal count)."""
    return type(
        f"BoundedProtocol[{listener}]",
        (BoundedProtocol,),
        {"listener": listener, "max_connections": max_connections, "header_timeout": header_timeout},
    )


def raise_open_files_limit(wanted: int = WANTED_OPEN_FILES) -> int:
    """Raise the soft open-files limit towards `wanted` (never above the hard limit); returns it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):  # macOS refuses more than OPEN_MAX: keep what we have
            pass
    return soft


def connection_caps(open_files: int, tcp_wanted: int, socket_wanted: int) -> tuple[int, int]:
    """(TCP cap, socket cap) that fit in `open_files` with RESERVED_FILES to spare; the socket keeps at
    least a quarter of what is left, so TCP can never take all of it."""
    room = max(8, open_files - RESERVED_FILES)
    socket_cap = max(4, min(socket_wanted, room // 4))
    tcp_cap = max(4, min(tcp_wanted, room - socket_cap))
    return tcp_cap, socket_cap
