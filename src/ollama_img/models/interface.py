"""What a loaded image pipeline offers the engine, the CLI and Python callers, whatever its family.

A family's pipeline class satisfies `ImagePipeline` (a Protocol: nothing to inherit). What a model can
do is its `Capabilities`: the engine and the CLI read them and never name a family. They hand a
pipeline only the options its capabilities list, and refuse any other, naming it.

Each capability stands for keyword arguments of `generate`:

    guidance          guidance=float
    negative_prompt   negative_prompt=str
    image_input       image=PIL.Image, strength=float      (image-to-image from a start image)
    mask              mask=PIL.Image                       (inpainting; needs image_input)
    reference_images  reference_images=[PIL.Image, ...]    (at most that many)
    teacache          teacache=float                       (TeaCache threshold)
    lora              loras=[...]                          (LoRA adapters with their scales)

Plain Python (no MLX): `create`, `show` and the CLI read capabilities from the store.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from PIL import Image

StepCallback = Callable[[int, int], None]  # on_step(steps done, total steps)


@dataclass(frozen=True)
class SizeLimits:
    """The image sizes a model makes: each side a multiple of `unit` pixels, up to its maximum."""

    unit: int
    max_width: int
    max_height: int

    def check(self, side: str, value) -> None:
        """A ValueError naming `side` ("width" or "height") when the model cannot make `value` pixels."""
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0 or value % self.unit:
            raise ValueError(f"{side} must be a positive multiple of {self.unit}, got {value!r}")
        limit = self.max_width if side == "width" else self.max_height
        if value > limit:
            raise ValueError(f"{side} must be at most {limit} for this model, got {value}")


@dataclass(frozen=True)
class Capabilities:
    """What a model can do beyond a prompt, a size, a number of steps and a seed (see the module doc)."""

    sizes: SizeLimits
    guidance: bool = False
    negative_prompt: bool = False
    image_input: bool = False
    mask: bool = False
    reference_images: int = 0  # the most reference images it takes; 0: none
    teacache: bool = False
    lora: bool = False

    @property
    def image_inputs(self) -> int:
        """How many images a request may send (`images`, `run --image`): its start image, else its
        reference images. The engine hands them to `generate` as `image` or `reference_images`."""
        return 1 if self.image_input else self.reference_images

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def intersection(self, other: Capabilities) -> Capabilities:
        """What both allow: a store model can do what its record lists and this version's code can do."""
        a, b = self.sizes, other.sizes
        sizes = SizeLimits(
            unit=math.lcm(a.unit, b.unit),
            max_width=min(a.max_width, b.max_width),
            max_height=min(a.max_height, b.max_height),
        )
        values = {
            f.name: min(getattr(self, f.name), getattr(other, f.name))
            for f in fields(self)
            if f.name != "sizes"
        }
        return Capabilities(sizes=sizes, **values)

    @classmethod
    def from_json(cls, obj) -> Capabilities:
        """Capabilities as `to_json` wrote them; a ValueError says what is malformed. Keys this version
        does not know (a newer version's capabilities) are ignored; missing ones are "not supported"."""
        if not isinstance(obj, dict):
            raise ValueError(f"capabilities {obj!r}, not an object")
        sizes = obj.get("sizes")
        if not isinstance(sizes, dict) or not all(
            _is_positive(sizes.get(f.name)) for f in fields(SizeLimits)
        ):
            raise ValueError(f"capability sizes {sizes!r}, not an object of positive whole numbers")
        values: dict[str, Any] = {"sizes": SizeLimits(**{f.name: sizes[f.name] for f in fields(SizeLimits)})}
        for f in fields(cls):
            if f.name == "sizes" or f.name not in obj:
                continue
            value = obj[f.name]
            wanted = int if f.name == "reference_images" else bool
            if type(value) is not wanted or (wanted is int and value < 0):
                raise ValueError(f"capability {f.name} {value!r}, not a {wanted.__name__}")
            values[f.name] = value
        return cls(**values)


def _is_positive(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


MIN_STRENGTH = 1e-6  # a strength from a start image is in (0, 1]; below this no step of any schedule runs


@dataclass(frozen=True)
class Defaults:
    """What a generation uses for what the caller leaves out."""

    width: int
    height: int
    steps: int
    guidance: float | None = None  # None: the model takes no guidance scale
    strength: float | None = None  # from a start image; None: the model takes none
    mask_strength: float | None = None  # from a start image and a mask


def validate_request(capabilities: Capabilities, *, width: int, height: int, steps: int) -> None:
    """The checks every pipeline's `validate` makes: sizes the model makes, a whole number of steps."""
    capabilities.sizes.check("width", width)
    capabilities.sizes.check("height", height)
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"steps must be a whole number >= 1, got {steps!r}")


@runtime_checkable
class ImagePipeline(Protocol):
    """A model loaded and ready to generate (`ollama_img.load_pipeline` returns one)."""

    name: str  # the store name or folder it was loaded from
    digest: str | None  # the manifest digest of a store model; None for a folder
    defaults: Defaults
    capabilities: Capabilities
    # A pipeline that follows memory plans also has `memory_plan` (`ollama_img.memory.plan.MemoryPlan`)
    # and `planner` (a `Planner` that plans each request; the engine sets its budget). They are not
    # members here: a family without a memory profile has neither.

    @property
    def resident_bytes(self) -> int:
        """Bytes of weights held in memory."""
        ...

    @property
    def benefits_from_warm_up(self) -> bool:
        """Whether running once right after loading spares the first request time (kernel compiles, GPU
        library set-up); the engine warms up only such pipelines unless told to."""
        ...

    def warm_up(self, width: int | None = None, height: int | None = None) -> None:
        """Run every part once at this size (default: the model's), changing no later image."""
        ...

    def validate(self, *, width: int, height: int, steps: int) -> None:
        """Raise ValueError, with a message a user can act on, when a request cannot run."""
        ...

    def size_for(self, *, width: int | None = None, height: int | None = None, **options) -> tuple[int, int]:
        """The (width, height) `generate` makes for these arguments: the sides asked, else what its image
        options imply (a start image's size, a reference image's), else the defaults. A ValueError when
        the images imply a size the model cannot make."""
        ...

    def generate(
        self,
        prompt: str,
        *,
        width: int,
        height: int,
        steps: int,
        seed: int | None = None,
        on_step: StepCallback | None = None,
        **options,
    ) -> Image.Image:
        """One image. `options` are the keywords of the capabilities the model has (module doc);
        `on_step(done, total)` runs after every step, and an exception it raises stops the generation."""
        ...
