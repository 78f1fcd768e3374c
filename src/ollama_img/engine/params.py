"""What a generation request may ask for, checked before it reaches the queue.

The fields and their checks are the options table (`ollama_img.options`), shared with `run`. Every
check fails with a UserError that names the field, so the API answers 400 with a message a person
can act on; what a model supports (its capabilities, its sizes) is checked against that model.
"""

import dataclasses
import re
from collections.abc import Callable
from dataclasses import dataclass

from ollama_img.engine.limits import bounded_text, check_pixels, parse_json_body
from ollama_img.errors import UserError
from ollama_img.image_input import InputImage
from ollama_img.modelfile import PARAMETERS
from ollama_img.names import ModelName
from ollama_img.options import (
    HEIGHT,
    KEEP_ALIVE,
    MAX_SEED,
    NEGATIVE_PROMPT,
    OPTIONS,
    SEED,
    STRENGTH,
    WIDTH,
    Option,
    api_name,
    check_inputs,
    decoded,
    shown,
)


@dataclass(frozen=True)
class GenerateParams:
    """A checked request, one attribute per option's field. None means "the model's default" (or the
    engine's, for keep-alive)."""

    model: str  # canonical name, e.g. "z-image:latest"
    prompt: str
    width: int | None = None
    height: int | None = None
    steps: int | None = None
    guidance: float | None = None
    negative_prompt: str | None = None
    seed: int | None = None
    n: int = 1
    keep_alive: float | None = None
    teacache: float | None = None  # TeaCache threshold; None: off
    images: tuple[InputImage, ...] | None = None  # the start image or the reference images
    mask: InputImage | None = None
    strength: float | None = None
    loras: tuple[tuple[str, float], ...] | None = None  # (digest of an adapter in the store, scale)

    def asked(self) -> dict[str, object]:
        """The options the request set, by field."""
        return {option.field: getattr(self, option.field) for option in OPTIONS}

    def with_decoded_images(self) -> "GenerateParams":
        """The same request with its images' pixels decoded: a UserError for a damaged one. CPU work,
        for a worker thread."""
        return dataclasses.replace(self, **decoded(self.asked()))


def parse_json_object(raw: bytes) -> dict:
    """The request body as a dict, or a UserError saying why it is not one."""
    if not raw.strip():
        raise UserError("empty request body: send a JSON object")
    try:
        body = parse_json_body(raw)
    except ValueError as exc:  # not UTF-8, not JSON, or an integer too long to convert
        raise UserError(f"invalid JSON in request body: {exc}") from None
    if not isinstance(body, dict):
        raise UserError("request body must be a JSON object")
    return body


def model_name(body: dict) -> str:
    value = body.get("model")
    if not isinstance(value, str) or not value.strip():
        raise UserError("missing 'model': name the model to use, e.g. \"z-image\"")
    return str(ModelName.parse(value))


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


def read_option(body: dict, option: Option, name: Callable[[Option], str] = api_name):
    """The option's checked value from the body, or None when it is absent."""
    value = body.get(option.field)
    return None if value is None else option.read(value, name(option))


_SIZE = re.compile(r"^\s*(\d+)\s*[xX×]\s*(\d+)\s*$")


def parse_size(text: str) -> tuple[int, int]:
    """ "1024x768" → (1024, 768): width first, as OpenAI's `size`."""
    match = _SIZE.match(text) if isinstance(text, str) else None
    if not match:
        raise UserError(f"invalid size {text!r}: expected WIDTHxHEIGHT, e.g. 1024x1024")
    width, height = int(match.group(1)), int(match.group(2))
    return WIDTH.read(width, api_name(WIDTH)), HEIGHT.read(height, api_name(HEIGHT))


def keepalive(body: dict) -> float | None:
    return read_option(body, KEEP_ALIVE)


def generate_params(
    body: dict, model: str, prompt: str, name: Callable[[Option], str] = api_name
) -> GenerateParams:
    """The shared part of both APIs: every option of the table, checked (bad values named by `name`)."""
    if not prompt.strip():
        raise UserError("empty prompt: say what the image should show")
    bounded_text(prompt, "'prompt'")
    values = {option.field: read_option(body, option, name) for option in OPTIONS}
    check_pixels(values["width"], values["height"])
    n = values["n"] = values["n"] or 1
    seed = values["seed"]
    if seed is not None and seed > MAX_SEED - (n - 1):  # seeds seed .. seed + n - 1 must all be seeds
        raise UserError(
            f"{name(SEED)} must be at most {MAX_SEED - (n - 1)} for {n} images, got {shown(seed)}"
        )
    values["negative_prompt"] = bounded_text(values["negative_prompt"], name(NEGATIVE_PROMPT)) or None
    check_inputs(values, name)
    return GenerateParams(model=model, prompt=prompt, **values)


def with_model_params(params: GenerateParams, model_params: dict[str, object]) -> GenerateParams:
    """The request with its model's PARAMETERs (a Modelfile's) for the options it leaves out: the
    request's own values win, the model's come next, the family's defaults last (the pipeline's).

    A default size is a default: a request with images gets the size they imply, as without a
    Modelfile; a default strength only applies to a request with an image. Each value is checked as a
    request's is (a model pulled from a registry is not trusted), unknown names are ignored (a later
    version's)."""
    values = {}
    sent_images = bool(params.images)
    for field, value in model_params.items():
        option = PARAMETERS.get(field)
        if option is None or getattr(params, field) is not None:
            continue
        if (option in (WIDTH, HEIGHT) and sent_images) or (option is STRENGTH and not sent_images):
            continue
        name = f"the model's parameter '{field}'"
        values[field] = option.read(value, name)
        if option is NEGATIVE_PROMPT:
            values[field] = bounded_text(values[field], name)
    seed = values.get(SEED.field)
    if seed is not None and seed > MAX_SEED - (params.n - 1):
        raise UserError(f"the model's seed {seed} leaves no room for {params.n} images: send 'seed'")
    return dataclasses.replace(params, **values) if values else params
