"""Keep-alive durations as ollama spells them: "5m", "1h30m", "10s", 300 (seconds), "-1" (forever), "0" (unload).

A parsed keep-alive is a number of seconds; `FOREVER` (infinity) keeps the model loaded until `stop`, and 0
unloads it as soon as its job is done.
"""

import math
import os
import re

from ollama_img.errors import UserError

FOREVER = math.inf
DEFAULT = 300.0  # five minutes, as ollama
ENV = "OLLAMA_IMG_KEEP_ALIVE"

_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_NUMBER = re.compile(r"[+-]?(\d+(?:\.\d*)?|\.\d+)")


def parse_keepalive(value, name: str = "keep_alive") -> float:
    """Seconds to keep a model loaded after its last job: FOREVER for a negative value, 0 to unload at once.

    A bad value is a UserError that calls it `name` (the API field, a flag, a variable).
    """
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise UserError(f"invalid {name} {value!r}: use a duration such as 5m, 30s, 1h, or -1 for forever")
    try:
        seconds = float(value) if isinstance(value, int | float) else _parse_text(value.strip(), name)
    except OverflowError:  # an integer beyond any float
        seconds = math.inf
    if not math.isfinite(seconds):
        shown = repr(value) if len(repr(value)) <= 40 else f"{repr(value)[:37]}..."
        raise UserError(f"invalid {name} {shown}: not a finite duration; use e.g. 5m, or -1 for forever")
    return FOREVER if seconds < 0 else seconds


def _parse_text(text: str, name: str) -> float:
    if _NUMBER.fullmatch(text):
        return float(text)  # a bare number is seconds, as ollama
    sign = -1.0 if text.startswith("-") else 1.0
    body = text.lstrip("+-")
    pos, total = 0, 0.0
    while pos < len(body):
        match = _PART.match(body, pos)
        if not match:
            raise UserError(
                f"invalid {name} {text!r}: use a duration such as 5m, 30s, 1h30m, a number of seconds, "
                "or -1 for forever"
            )
        total += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    if not body:
        raise UserError(f"invalid {name} '': use a duration such as 5m")
    return sign * total


def default_keepalive() -> float:
    """The engine's default: `OLLAMA_IMG_KEEP_ALIVE`, else five minutes."""
    raw = os.environ.get(ENV)
    if raw is None or not raw.strip():
        return DEFAULT
    try:
        return parse_keepalive(raw)
    except UserError as exc:
        raise UserError(f"{ENV}: {exc}") from None
