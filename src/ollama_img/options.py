"""The options of a generation request, declared once: the API's fields and `run`'s flags.

Each `Option` names its API field (also the pipeline's `generate` keyword), its `run` flag, its help
text, how a value is checked, and the model capability it needs (None: every model takes it). The
engine (`engine/params.py`) checks request bodies with these options, and `run` builds its flags from
them and checks them with the same code before anything starts. Every check is handed the name to
report, so a bad value is named as the user spelled it: `'steps'` in an API answer, `--steps` on
the command line.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ollama_img import image_input
from ollama_img.errors import UserError
from ollama_img.image_input import InputImage
from ollama_img.keepalive import parse_keepalive
from ollama_img.teacache import DEFAULT_THRESHOLD

if TYPE_CHECKING:
    from ollama_img.models.interface import Capabilities

MAX_IMAGES = 10  # as OpenAI's images API
MAX_SEED = 2**63 - 1
MAX_STEPS = 10_000  # far beyond any useful schedule; a bigger number is a typo, not a request


def shown(value, limit: int = 40) -> str:
    """A value as JSON for an error message, cut short when long (a 400-digit number, a huge list)."""
    text = json.dumps(value)
    return text if len(text) <= limit else f"{text[: limit - 3]}..."


# -- checks: (value, the name to report) -> the checked value -----------------------------------------


def whole(minimum: int, maximum: int | None = None) -> Callable[[object, str], int]:
    def read(value, name: str) -> int:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise UserError(f"{name} must be an integer, got {shown(value)}")
        if value < minimum:
            raise UserError(f"{name} must be at least {minimum}, got {shown(value)}")
        if maximum is not None and value > maximum:
            raise UserError(f"{name} must be at most {maximum}, got {shown(value)}")
        return value

    return read


def number(minimum: float) -> Callable[[object, str], float]:
    def read(value, name: str) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise UserError(f"{name} must be a number, got {shown(value)}")
        try:
            result = float(value)
        except OverflowError:  # an integer beyond any float
            result = math.inf
        if not math.isfinite(result):
            raise UserError(f"{name} must be a finite number, got {shown(value)}")
        if result < minimum:
            raise UserError(f"{name} must be at least {minimum:g}, got {shown(value)}")
        return result

    return read


def text(value, name: str) -> str:
    if not isinstance(value, str):
        raise UserError(f"{name} must be a string, got {shown(value)}")
    return value


def side(value, name: str) -> int:
    """An image side: a multiple of what every family's sides are multiples of (each model then checks
    its own unit and limits). The model families are imported only here, when a side is given: a `run`
    at the default size starts without them."""
    from ollama_img.models import size_unit

    unit = size_unit()
    value = whole(unit)(value, name)
    if value % unit:
        raise UserError(f"{name} must be a multiple of {unit}, got {value}")
    return value


def keep_alive(value, name: str) -> float:
    return parse_keepalive(value, name)


def fraction(value, name: str) -> float:
    """A strength: more than 0, at most 1."""
    from ollama_img.models.interface import MIN_STRENGTH

    result = number(0.0)(value, name)
    if result == 0 or result > 1:
        raise UserError(f"{name} must be more than 0 and at most 1, got {shown(value)}")
    if result < MIN_STRENGTH:
        raise UserError(f"{name} must be at least {MIN_STRENGTH:g}, got {shown(value)}")
    return result


def image(value, name: str) -> InputImage:
    """An image file: base64 or a data: URL in JSON, raw bytes from an upload. Checked from its header
    (format, pixels); decoded later, off the event loop."""
    if isinstance(value, str):
        value = image_input.from_text(value, name)
    elif not isinstance(value, bytes):
        raise UserError(f"{name} must be an image as base64 text, got {shown(value)}")
    return image_input.read(value, name)


def loras(value, name: str) -> tuple[tuple[str, float], ...] | None:
    """LoRA adapters already in the store: `[{"digest": "sha256:...", "scale": 0.8}, ...]` (scale 1 when
    left out) -> ((digest, scale), ...), None when empty. Never a path: the engine reads no file a
    client names."""
    from ollama_img.models.lora import MAX_ADAPTERS
    from ollama_img.store.blobs import is_digest

    if not isinstance(value, list):
        raise UserError(
            f'{name} must be a list of {{"digest": "sha256:...", "scale": 1.0}}, got {shown(value)}'
        )
    if len(value) > MAX_ADAPTERS:
        raise UserError(f"{name} holds {len(value)} adapters, at most {MAX_ADAPTERS}")
    out = []
    for i, item in enumerate(value, 1):
        where = f"{name} #{i}" if len(value) > 1 else name
        if not isinstance(item, dict):
            raise UserError(
                f'{where} must be an object {{"digest": "sha256:...", "scale": 1.0}}, got {shown(item)}'
            )
        unknown = sorted(set(item) - {"digest", "scale", "name"})
        if unknown:
            raise UserError(
                f"{where} has {unknown[0]!r}: an adapter is named by its digest in the store only"
            )
        digest = item.get("digest")
        if not is_digest(digest):
            raise UserError(
                f"{where}: 'digest' must be the sha256 digest of an adapter in the store "
                f"(sha256:<64 hex digits>), got {shown(digest)}"
            )
        scale = item.get("scale")
        out.append((digest, 1.0 if scale is None else number(-math.inf)(scale, f"{where} 'scale'")))
    return tuple(out) or None


def images(value, name: str) -> tuple[InputImage, ...] | None:
    """A list of images (None when empty), each named by its place when there are several."""
    if not isinstance(value, list):
        raise UserError(f"{name} must be a list of images (base64 text), got {shown(value)}")
    if len(value) > image_input.MAX_INPUT_IMAGES:
        raise UserError(f"{name} holds {len(value)} images, at most {image_input.MAX_INPUT_IMAGES}")
    several = len(value) > 1
    return tuple(image(item, f"{name} #{i}" if several else name) for i, item in enumerate(value, 1)) or None


# -- the table -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Option:
    field: str  # the API's field and the pipeline's generate() keyword
    flag: str  # run's flag
    help: str
    read: Callable[[object, str], object]  # (value, name to report) -> the checked value
    capability: str | None = None  # the `Capabilities` attribute a model needs for it
    short: str | None = None  # run's one-letter flag

    @property
    def param(self) -> str:
        """The parameter of `run` that takes it."""
        return self.flag.removeprefix("--").replace("-", "_")


WIDTH = Option("width", "--width", "Image width in pixels (default: the model's).", side)
HEIGHT = Option("height", "--height", "Image height in pixels (default: the model's).", side)
STEPS = Option("steps", "--steps", "Denoising steps (default: the model's).", whole(1, MAX_STEPS))
SEED = Option("seed", "--seed", "Random seed, for reproducible images.", whole(0, MAX_SEED))
GUIDANCE = Option(
    "guidance", "--guidance", "Guidance scale (default: the model's).", number(0.0), capability="guidance"
)
NEGATIVE_PROMPT = Option(
    "negative_prompt", "--negative", "Negative prompt: what to avoid.", text, capability="negative_prompt"
)
COUNT = Option(
    "n", "--count", "Number of images (seeds seed, seed+1, ...).", whole(1, MAX_IMAGES), short="-n"
)
KEEP_ALIVE = Option(
    "keep_alive",
    "--keepalive",
    "How long the model stays loaded afterwards: 5m, 1h, 0, -1 (forever).",
    keep_alive,
)
TEACACHE = Option(
    "teacache",
    "--teacache",
    f"Skip transformer passes on steps that change little (TeaCache); alone: {DEFAULT_THRESHOLD}, 0: off.",
    number(0.0),
    capability="teacache",
)

# Images in, whatever the model does with them: the engine hands `images` to the pipeline as its start
# image or as its reference images, by the model's capabilities (`image_keywords`).
IMAGES = Option(
    "images",
    "--image",
    "An input image (PNG, JPEG, WebP): the start image, or a reference image (repeat it for several), "
    "as the model takes them.",
    images,
    capability="image_inputs",
)
MASK = Option(
    "mask",
    "--mask",
    "With --image: repaint only where this mask is white (or transparent), same size as the image.",
    image,
    capability="mask",
)
STRENGTH = Option(
    "strength",
    "--strength",
    "With --image: how much to change it, more than 0 up to 1 (default: the model's).",
    fraction,
    capability="image_input",
)

# LoRA adapters by their digests in the store (`run --lora PATH[:SCALE]` stores the file first).
LORAS = Option(
    "loras",
    "--lora",
    "A LoRA adapter (safetensors) and its scale, PATH[:SCALE] (default 1); repeat it for several.",
    loras,
    capability="lora",
)

OPTIONS = (
    WIDTH,
    HEIGHT,
    STEPS,
    SEED,
    GUIDANCE,
    NEGATIVE_PROMPT,
    COUNT,
    KEEP_ALIVE,
    TEACACHE,
    IMAGES,
    MASK,
    STRENGTH,
    LORAS,
)
BY_FIELD = {option.field: option for option in OPTIONS}
INPUTS = (IMAGES, MASK)  # images in: not handed to `generate` under their field (see image_keywords)


def api_name(option: Option) -> str:
    """How the API names an option in its messages: `'negative_prompt'`."""
    return f"'{option.field}'"


def flag_name(option: Option) -> str:
    """How `run` names it: `--negative`."""
    return option.flag


def check_supported(
    model: str, asked: dict[str, object], capabilities: Capabilities, name: Callable[[Option], str] = api_name
) -> None:
    """A UserError naming the first option in `asked` (fields with a value) the model cannot take, or
    more images than it takes."""
    for field, value in asked.items():
        option = BY_FIELD.get(field)
        needs = option.capability if option is not None else None
        if value is not None and needs and not getattr(capabilities, needs):
            raise UserError(f"{model} does not support {name(option)}")
    sent = asked.get(IMAGES.field) or ()
    if len(sent) > capabilities.image_inputs:
        most = capabilities.image_inputs
        raise UserError(f"{model} takes at most {most} image{'s' if most > 1 else ''}, got {len(sent)}")


def check_inputs(asked: dict[str, object], name: Callable[[Option], str] = api_name) -> None:
    """What image options need whatever the model: an image for a mask or a strength, and a mask of the
    image's size."""
    sent = asked.get(IMAGES.field)
    for option in (MASK, STRENGTH):
        if asked.get(option.field) is not None and not sent:
            raise UserError(f"{name(option)} needs an image to start from: send {name(IMAGES)} too")
    mask = asked.get(MASK.field)
    if mask is not None and mask.size != sent[0].size:
        raise UserError(
            f"the mask is {'x'.join(map(str, mask.size))} pixels but the image "
            f"{'x'.join(map(str, sent[0].size))}: they must be the same size"
        )


def image_keywords(capabilities: Capabilities, asked: dict[str, object]) -> dict[str, object]:
    """`generate`'s keywords for the images a request sent: its start image (and mask) for a model
    that takes one, else its reference images. Pictures must have been decoded."""
    sent = asked.get(IMAGES.field)
    if not sent:
        return {}
    if not capabilities.image_input:
        return {"reference_images": [item.picture for item in sent]}
    mask = asked.get(MASK.field)
    return {"image": sent[0].picture, **({"mask": mask.picture} if mask is not None else {})}


def decoded(asked: dict[str, object]) -> dict[str, object]:
    """The image fields of `asked` with their pixels decoded (CPU work: off the event loop)."""
    out = {}
    for option in INPUTS:
        value = asked.get(option.field)
        if isinstance(value, tuple):
            out[option.field] = tuple(item.decoded() for item in value)
        elif value is not None:
            out[option.field] = value.decoded()
    return out


def check_sizes(asked: dict[str, object], capabilities: Capabilities) -> None:
    """A UserError when an asked side is one the model cannot make (its unit and limits)."""
    for option in (WIDTH, HEIGHT):
        value = asked.get(option.field)
        if value is not None:
            try:
                capabilities.sizes.check(option.field, value)
            except ValueError as exc:
                raise UserError(str(exc)) from None
