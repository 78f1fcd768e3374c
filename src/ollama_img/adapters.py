"""The adapters a pipeline applies: each a checked adapter file and its scale, from a path or the store.

`load_pipeline(..., loras=[(path_or_digest, scale), ...])`, a pipeline's `generate(loras=...)` and the
engine hand adapters over as such pairs; `resolve` finds each file (a digest only in the store), checks
it against the model (`models.lora.check_adapter`: names and shapes, from headers) and returns
`Adapter`s. Plain Python: no MLX.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ollama_img.errors import UserError
from ollama_img.models.lora import DEFAULT_STRATEGY, MAX_ADAPTERS, SIDE_PATH, AdapterLayout, check_adapter

if TYPE_CHECKING:
    from ollama_img.models.architecture import Architecture
    from ollama_img.store import Store
    from ollama_img.weights import WeightSource

LoraSpec = tuple  # (a path or "sha256:<hex>", scale)


@dataclass(frozen=True)
class Adapter:
    """One adapter to apply: its checked layout, the user's scale, and the sha256 naming it (if known)."""

    layout: AdapterLayout
    scale: float = 1.0
    digest: str | None = None

    @property
    def key(self) -> tuple[str, float]:
        """What tells two adapter sets apart: the file and the scale."""
        return (self.digest or str(self.layout.path), self.scale)


def held_elements(adapters: Iterable[Adapter], strategy: str | None = None) -> int:
    """Elements the adapters hold on the device beside the weights they change: their side paths'
    factors (the memory plan counts them with the component); merged adapters hold none."""
    if (strategy or DEFAULT_STRATEGY) != SIDE_PATH:
        return 0
    return sum(adapter.layout.side_path_elements for adapter in adapters)


def with_adapters(
    planner, architecture: Architecture, adapters: Iterable[Adapter], strategy: str | None = None
):
    """`planner` (a `memory.plan.Planner`) counting what the adapters hold beside the weights of the
    component they change."""
    adapters = tuple(adapters)
    if not adapters:
        return planner
    return planner.with_adapters(architecture.lora.component, held_elements(adapters, strategy))


def parse_spec(text: str, where: str = "--lora") -> tuple[str, float]:
    """`PATH[:SCALE]` -> (path, scale); a scale is what follows the last `:` when it reads as a number."""
    path, sep, tail = text.rpartition(":")
    if sep and path:
        try:
            return path, checked_scale(float(tail), f"{where} {text}")
        except ValueError:
            pass
    return text, 1.0


def checked_scale(value, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise UserError(f"{where}: the scale must be a finite number, got {value!r}")
    return float(value)


def resolve(
    specs: Iterable[LoraSpec], source: WeightSource, architecture: Architecture, store: Store | None = None
) -> tuple[Adapter, ...]:
    """Each (path or digest, scale) as an Adapter checked against the model of `source`: a digest is
    looked up in the store (`store`, else the source's, else the default one), anything else is a file."""
    specs = list(specs)
    if not specs:
        return ()
    if architecture.lora is None:
        raise UserError(f"{source.label}: {architecture.family} models do not take LoRA adapters")
    if len(specs) > MAX_ADAPTERS:
        raise UserError(f"at most {MAX_ADAPTERS} adapters at once, got {len(specs)}")
    shapes = component_shapes(source, architecture.lora.component)
    adapters = []
    for spec in specs:
        where, scale = spec
        scale = checked_scale(scale, f"adapter {where}")
        digest = None
        if isinstance(where, str) and where.startswith("sha256:"):
            from ollama_img.store import Store
            from ollama_img.store.adapters import adapter_blob

            digest, path = where, adapter_blob(store or getattr(source, "store", None) or Store(), where)
        else:
            path = Path(where).expanduser()
        adapters.append(Adapter(check_adapter(architecture, path, shapes, digest), scale, digest))
    return tuple(adapters)


def stored_adapters(source) -> list[tuple[str, float]]:
    """A store model's own adapters (its config record's, from a Modelfile's ADAPTER lines) as (digest,
    scale), in the order they apply; none for a folder."""
    manifest = getattr(source, "manifest", None)
    return [(record.digest, record.scale) for record in manifest.config.adapters] if manifest else []


def component_shapes(source: WeightSource, component: str) -> dict[str, tuple[int, ...]]:
    """The logical shape of each tensor of a component, from headers only (a store model's manifest, a
    folder's safetensors headers): what `check_adapter` checks an adapter against."""
    manifest = getattr(source, "manifest", None)
    if manifest is not None:
        return shapes_of_manifest(manifest, component)
    from ollama_img.models import architecture_for
    from ollama_img.store.folder import weight_files
    from ollama_img.store.source import read_header

    architecture = architecture_for(source.read_json("model_index.json").get("_class_name"))
    declared = {c.name: c for c in architecture.components}
    shapes = {}
    for path in weight_files(source.root / component, declared[component]):
        shapes.update({t.name: t.shape for t in read_header(path).tensors})
    return shapes


def shapes_of_manifest(manifest, component: str) -> dict[str, tuple[int, ...]]:
    """`component_shapes` of a stored model's manifest (what `create` and the engine check against)."""
    prefix = component + "/"
    return {
        layer.name[len(prefix) :]: tuple(layer.shape)
        for layer in manifest.component_layers(component)
        if layer.is_tensor and layer.shape is not None
    }
