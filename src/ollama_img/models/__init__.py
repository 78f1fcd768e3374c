"""Architectures ollama-img can run, keyed by the `_class_name` of a diffusers `model_index.json`.

The store and the CLI only consult this table; each architecture's MLX code lives in its own package
(`models/<arch>/`), so adding one touches neither.
"""

import difflib
from dataclasses import dataclass

from ollama_img.errors import UserError


@dataclass(frozen=True)
class Component:
    """One folder of a model directory."""

    name: str  # folder name, e.g. "transformer"
    weights: str | None = None  # safetensors stem ("diffusion_pytorch_model", "model"), None if no weights
    required_files: tuple[str, ...] = ()  # files that must exist in the folder
    optional_files: tuple[str, ...] = ()  # files kept when present


@dataclass(frozen=True)
class Architecture:
    class_name: str  # model_index.json `_class_name`
    family: str  # short name shown by `show`
    module: str  # package that provides `load(source, ...)`
    components: tuple[Component, ...]


ZIMAGE = Architecture(
    class_name="ZImagePipeline",
    family="z-image",
    module="ollama_img.models.zimage",
    components=(
        Component("scheduler", required_files=("scheduler_config.json",)),
        Component(
            "text_encoder",
            weights="model",
            required_files=("config.json",),
            optional_files=("generation_config.json",),
        ),
        Component(
            "tokenizer",
            required_files=("tokenizer.json", "tokenizer_config.json"),
            optional_files=("chat_template.jinja", "special_tokens_map.json", "vocab.json", "merges.txt"),
        ),
        Component("transformer", weights="diffusion_pytorch_model", required_files=("config.json",)),
        Component("vae", weights="diffusion_pytorch_model", required_files=("config.json",)),
    ),
)

FLUX2_KLEIN = Architecture(
    class_name="Flux2KleinPipeline",
    family="flux2-klein",
    module="ollama_img.models.flux2",
    components=(
        Component("scheduler", required_files=("scheduler_config.json",)),
        Component(
            "text_encoder",
            weights="model",
            required_files=("config.json",),
            optional_files=("generation_config.json",),
        ),
        Component(
            "tokenizer",
            required_files=("tokenizer.json", "tokenizer_config.json"),
            optional_files=(
                "chat_template.jinja",
                "special_tokens_map.json",
                "added_tokens.json",
                "vocab.json",
                "merges.txt",
            ),
        ),
        Component("transformer", weights="diffusion_pytorch_model", required_files=("config.json",)),
        Component("vae", weights="diffusion_pytorch_model", required_files=("config.json",)),
    ),
)

ARCHITECTURES = {a.class_name: a for a in (ZIMAGE, FLUX2_KLEIN)}


def architecture_for(class_name) -> Architecture:
    """The architecture for a model_index.json `_class_name` (any JSON value), or a UserError naming the
    known ones."""
    if isinstance(class_name, str) and class_name in ARCHITECTURES:
        return ARCHITECTURES[class_name]
    known = ", ".join(sorted(ARCHITECTURES))
    close = difflib.get_close_matches(str(class_name), ARCHITECTURES, n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    raise UserError(f"unsupported architecture {class_name!r} in model_index.json{hint}; supported: {known}")
