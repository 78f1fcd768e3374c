"""Every bound the engine puts on what a client may send or hold, named once.

The README's "Limits" table lists these; a request beyond one is a 4xx with a JSON error naming it, and a
connection beyond one is closed, so no client can crash, freeze or starve the engine.
"""

import json

from ollama_img.errors import UserError

# Request bodies, on every route. Large enough for a few big PNGs sent base64 in JSON or as multipart
# uploads (image inputs), small enough that a client cannot make the engine buffer gigabytes. Enforced
# while the body is read, so a larger body is refused after MAX_BODY_BYTES, not after reading all of it.
MAX_BODY_BYTES = 64 * 2**20
# A body whose bytes stop arriving for this long is dropped (a slow-body client holds a connection).
BODY_IDLE_TIMEOUT = 30.0

# Prompts, in characters. The text encoder keeps at most 512 tokens (a few thousand characters of any
# script), so this only stops abuse: a 30 MB prompt took seconds to tokenize and was embedded in the PNG.
MAX_PROMPT_CHARS = 32_768

# Pixels per image. The VAE's attention spans every latent position and the transformer every patch: at
# 2048x2048 that is 65,536 positions and 16,384 patches, which every back end handles (the attention in
# query chunks, see models/autoencoder_kl.py); beyond it time and memory grow with the square of the area.
MAX_PIXELS = 2048 * 2048

# JSON nesting. No field of any route nests deeper than 3; a 100,000-level document is an attack.
MAX_JSON_DEPTH = 32

# Connections held at once, per listener: beyond it a new connection gets a 503 and is closed at once, so
# a flood of TCP connections can never take the file descriptors the Unix socket (the CLI's way in) needs.
MAX_TCP_CONNECTIONS = 512
MAX_SOCKET_CONNECTIONS = 256
# A connection must send a request's headers within this many seconds of opening (or of its previous
# answer); an idle keep-alive connection is closed after KEEP_ALIVE_TIMEOUT.
HEADER_TIMEOUT = 10.0
KEEP_ALIVE_TIMEOUT = 5.0
# The engine asks for at least this many open files (the soft limit, up to the hard one): every
# connection and every memory-mapped weight file of a loaded model holds one.
WANTED_OPEN_FILES = 8192
# File descriptors kept free of connections whatever the limit: weight files, logs, the worker's pipes.
RESERVED_FILES = 256


def bounded_text(value: str | None, name: str, limit: int = MAX_PROMPT_CHARS) -> str | None:
    """`value` unchanged, or a UserError when it is longer than `limit` characters (`name` as messages
    spell the field: "'prompt'", "--negative")."""
    if value is not None and len(value) > limit:
        raise UserError(f"{name} is too long: {len(value)} characters, at most {limit}")
    return value


def check_pixels(width: int | None, height: int | None):
    """Refuse an image larger than MAX_PIXELS (None: the model's default size, which is within it)."""
    if width is not None and height is not None and width * height > MAX_PIXELS:
        raise UserError(
            f"{width}x{height} is too large: at most {MAX_PIXELS} pixels per image (2048x2048, or "
            "for example 4096x1024)"
        )


def parse_json_body(raw: bytes):
    """The JSON document of a body, refusing documents nested deeper than MAX_JSON_DEPTH (a UserError,
    as for any invalid JSON: the decoder's RecursionError is not a 500)."""
    try:
        value = json.loads(raw)
    except RecursionError:
        raise UserError(f"invalid JSON in request body: nested deeper than {MAX_JSON_DEPTH} levels") from None
    if _depth_exceeds(value, MAX_JSON_DEPTH):
        raise UserError(f"invalid JSON in request body: nested deeper than {MAX_JSON_DEPTH} levels")
    return value


def _depth_exceeds(value, limit: int) -> bool:
    """Whether containers nest deeper than `limit` (iteratively: no recursion on hostile input)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False
