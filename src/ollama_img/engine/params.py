"""What a generation request may ask for, checked before it reaches the queue.

Every check here fails with a UserError that names the field, so the API answers 400 with a message a
person can act on; the model-specific limits (its size range) are checked by the pipeline itself.
"""

import json
import math
import re
from dataclasses import dataclass

from ollama_img.errors import UserError
from ollama_img.keepalive import parse_keepalive
from ollama_img.names import ModelName

MAX_IMAGES = 10  # as OpenAI's images API
MAX_SEED = 2**63 - 1
MAX_STEPS = 10_000  # far beyond any useful schedule; a bigger number is a typo, not a request
SIZE_MULTIPLE = 16


@dataclass(frozen=True)
class GenerateParams:
    """A checked request. None means "the model's default" (or the engine's, for keep-alive)."""

    model: str  # canonical name, e.g. "z-image:latest"
    prompt: str
    width: int | None = None
    height: int | None = None
    steps: int | None = None
    guidance: float | None = None
    negative_prompt: str | None = None
    seed: int | None = None
    n: int = 1
    keepalive: float | None = None
    teacache: float | None = None  # TeaCache threshold; None: off


def parse_json_object(raw: bytes) -> dict:
    """The request body as a dict, or a UserError saying why it is not one."""
    if not raw.strip():
        raise UserError("empty request body: send a JSON object")
    try:
        body = json.loads(raw)
    except ValueError as exc:  # not UTF-8, not JSON, or an integer too long to convert
        raise UserError(f"invalid JSON in request body: {exc}") from None
    if not isinstance(body, dict):
        raise UserError("request body must be a JSON object")
    return body


def shown(value, limit: int = 40) -> str:
    """A value as JSON for an error message, cut short when long (a 400-digit number, a huge list)."""
    text = json.dumps(value)
    return text if len(text) <= limit else f"{text[: limit - 3]}..."


def model_name(body: dict) -> str:
    value = body.get("model")
    if not isinstance(value, str) or not value.strip():
        raise UserError("missing 'model': name the model to use, e.g. \"z-image\"")
    return str(ModelName.parse(value))


def optional_int(body: dict, key: str, *, minimum: int, maximum: int | None = None) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise UserError(f"'{key}' must be an integer, got {shown(value)}")
    if value < minimum:
        raise UserError(f"'{key}' must be at least {minimum}, got {shown(value)}")
    if maximum is not None and value > maximum:
        raise UserError(f"'{key}' must be at most {maximum}, got {shown(value)}")
    return value


def optional_float(body: dict, key: str, *, minimum: float) -> float | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise UserError(f"'{key}' must be a number, got {shown(value)}")
    try:
        number = float(value)
    except OverflowError:  # an integer beyond any float
        number = math.inf
    if not math.isfinite(number):
        raise UserError(f"'{key}' must be a finite number, got {shown(value)}")
    if number < minimum:
        raise UserError(f"'{key}' must be at least {minimum:g}, got {shown(value)}")
    return number


def optional_str(body: dict, key: str) -> str | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise UserError(f"'{key}' must be a string, got {shown(value)}")
    return value


def optional_bool(body: dict, key: str, default: bool) -> bool:
    value = body.get(key, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise UserError(f"'{key}' must be true or false, got {shown(value)}")
    return value


def dimension(body: dict, key: str) -> int | None:
    value = optional_int(body, key, minimum=SIZE_MULTIPLE)
    if value is not None and value % SIZE_MULTIPLE:
        raise UserError(f"'{key}' must be a multiple of {SIZE_MULTIPLE}, got {value}")
    return value


_SIZE = re.compile(r"^\s*(\d+)\s*[xX×]\s*(\d+)\s*$")


def parse_size(text: str) -> tuple[int, int]:
    """ "1024x768" → (1024, 768): width first, as OpenAI's `size`."""
    match = _SIZE.match(text) if isinstance(text, str) else None
    if not match:
        raise UserError(f"invalid size {text!r}: expected WIDTHxHEIGHT, e.g. 1024x1024")
    width, height = int(match.group(1)), int(match.group(2))
    for key, value in (("width", width), ("height", height)):
        dimension({key: value}, key)
    return width, height


def keepalive(body: dict) -> float | None:
    if body.get("keep_alive") is None:
        return None
    return parse_keepalive(body["keep_alive"])


def generate_params(body: dict, model: str, prompt: str) -> GenerateParams:
    """The shared part of both APIs: sizes, steps, guidance, negative prompt, seed, n, keep-alive, TeaCache."""
    if not prompt.strip():
        raise UserError("empty prompt: say what the image should show")
    n = optional_int(body, "n", minimum=1, maximum=MAX_IMAGES)
    n = 1 if n is None else n
    seed = optional_int(body, "seed", minimum=0, maximum=MAX_SEED - (n - 1))
    return GenerateParams(
        model=model,
        prompt=prompt,
        width=dimension(body, "width"),
        height=dimension(body, "height"),
        steps=optional_int(body, "steps", minimum=1, maximum=MAX_STEPS),
        guidance=optional_float(body, "guidance", minimum=0.0),
        negative_prompt=optional_str(body, "negative_prompt") or None,
        seed=seed,
        n=n,
        keepalive=keepalive(body),
        teacache=optional_float(body, "teacache", minimum=0.0),
    )
