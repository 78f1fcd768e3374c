"""`run`'s request, sent to an engine that is already running before the CLI itself is imported.

A warm `run` spent 0.21 s of its own before its request left (an H100 host, bench/RESULTS.md): the
interpreter, Typer, then the store, the model families and the checks. The engine's image takes about a
second and needs none of that. So the console entry reads the plain forms of `run`'s arguments with
the standard library, sends the request at once, and lets the real command confirm it: `run` parses
the same arguments with Typer, makes every check and builds its own request body, and adopts this
connection (`take`) only when that body is exactly the one sent. In any other case (a check fails, the
bodies differ, the command never asks the engine) the connection is closed unread, which cancels the
job in the engine (as Ctrl-C does), and the command goes on as if nothing had been sent.

What this module does not read (image inputs, adapters, `--teacache`, `--help`, unknown flags, a
prompt from stdin or the terminal) it leaves to the command alone, by sending nothing.
"""

from __future__ import annotations

import json
import re
import socket

from ollama_img.cli.run_options import RunOptions
from ollama_img.engine import runtime
from ollama_img.errors import UserError
from ollama_img.names import ModelName
from ollama_img.options import (
    COUNT,
    GUIDANCE,
    HEIGHT,
    KEEP_ALIVE,
    NEGATIVE_PROMPT,
    SEED,
    STEPS,
    STRENGTH,
    WIDTH,
)

# The request options read here, with how Typer converts their text (run's parameter types).
_VALUES = {o.flag: (o, int) for o in (WIDTH, HEIGHT, STEPS, SEED, COUNT)}
_VALUES.update({o.flag: (o, float) for o in (GUIDANCE, STRENGTH)})
_VALUES.update({o.flag: (o, str) for o in (NEGATIVE_PROMPT, KEEP_ALIVE)})
_VALUES[COUNT.short] = (COUNT, int)
_CLI_ONLY = {"--output", "-o", "--format"}  # flags with a value that the request does not carry
_SWITCHES = {"--no-open"}
_SIZE = re.compile(r"^(\d+)x(\d+)$")

CONNECT_TIMEOUT = 2.0

_pending: list[tuple[str, socket.socket]] = []  # (the body sent, as canonical JSON; its connection)


def canonical(body: dict) -> str:
    return json.dumps(body, sort_keys=True, separators=(",", ":"))


def request_body(args: list[str]) -> dict | None:
    """The /api/generate body of `run ARGS` (the words after `run`), or None for what this does not read."""
    words: list[str] = []
    fields: dict[str, object] = {}
    i = 0
    try:
        while i < len(args):
            arg = args[i]
            i += 1
            if arg == "--":
                words.extend(args[i:])
                break
            if not arg.startswith("-") or arg == "-":
                words.append(arg)
                continue
            name, joined, value = arg.partition("=")
            if name in _SWITCHES and not joined:
                continue
            if name not in _VALUES and name not in _CLI_ONLY and name != "--size":
                return None
            if not joined:
                if i >= len(args):
                    return None
                value = args[i]
                i += 1
            if name == "--size":
                match = _SIZE.match(value)
                if match is None:
                    return None
                fields[WIDTH.field], fields[HEIGHT.field] = int(match.group(1)), int(match.group(2))
            elif name in _VALUES:
                option, convert = _VALUES[name]
                fields[option.field] = convert(value)
        if len(words) < 2:
            return None
        prompt = " ".join(words[1:]).strip()
        if not prompt:
            return None
        model = str(ModelName.parse(words[0]))
    except (ValueError, UserError):
        return None
    return {**RunOptions(model=model, fields=fields).request(prompt), "stream": True}


def send(args: list[str]) -> bool:
    """Send `run ARGS`'s request to the running engine, if there is one and this reads the arguments."""
    body = request_body(args)
    if body is None:
        return False
    try:
        path = runtime.socket_path()
    except UserError:  # the command reports it, in one line
        return False
    payload = json.dumps(body).encode()
    head = (
        "POST /api/generate HTTP/1.1\r\nHost: engine\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\n\r\n"
    ).encode()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(CONNECT_TIMEOUT)
        sock.connect(str(path))
        sock.sendall(head + payload)
        sock.settimeout(None)
    except OSError:
        sock.close()
        return False
    _pending.append((canonical(body), sock))
    return True


def take(body: dict) -> socket.socket | None:
    """The early request's connection, when what it sent is exactly `body` (as the engine client sends
    it); otherwise None, and any early request is cancelled."""
    if not _pending:
        return None
    sent, sock = _pending.pop()
    if sent == canonical(body):
        return sock
    sock.close()
    return None


def discard():
    """Cancel an early request that the command did not take (it failed, or did not ask the engine)."""
    while _pending:
        _pending.pop()[1].close()
