"""What the engine asks the model store: does a model exist (and which version), and what to list/show.

Kept in one place so the HTTP routes never depend on the store's internals.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ollama_img.engine import utc_iso
from ollama_img.formatting import human_count
from ollama_img.names import ModelName

if TYPE_CHECKING:
    from ollama_img.models.interface import Capabilities
    from ollama_img.store.config import ModelConfig


def _store():
    from ollama_img.store import Store

    return Store()


def store_root():
    """The folder of the store this engine serves (absolute)."""
    return _store().root.absolute()


def resolve(name: str) -> str | None:
    """The manifest digest of a model, or NotFound (404) with the store's hint."""
    return _store().manifest(name).digest


def lookup(name: str) -> tuple[str, Capabilities | None, dict[str, object]]:
    """The manifest digest of a model, what its record says it can do, and its PARAMETERs (a
    Modelfile's defaults for what a request leaves out); NotFound (404) without one."""
    manifest = _store().manifest(name)
    return manifest.digest, manifest.config.capabilities, dict(manifest.config.params)


def check_adapters(name: str, loras) -> tuple[str, int]:
    """Each (digest, scale) an adapter blob of the store, intact, that fits the model (a UserError, 400,
    naming the digest and the first key that does not fit): checked from headers before queueing.
    Returns what they hold beside the weights, (component, elements), for the job's memory plan."""
    from ollama_img.adapters import Adapter, held_elements, shapes_of_manifest
    from ollama_img.errors import UserError
    from ollama_img.models import ARCHITECTURES
    from ollama_img.models.lora import check_adapter
    from ollama_img.store.adapters import adapter_blob

    store = _store()
    manifest = store.manifest(name)
    architecture = ARCHITECTURES.get(manifest.config.architecture)
    if architecture is None or architecture.lora is None:
        raise UserError(f"{canonical(name)} does not take LoRA adapters")
    shapes = shapes_of_manifest(manifest, architecture.lora.component)
    layouts = [
        check_adapter(architecture, adapter_blob(store, digest), shapes, digest) for digest, _ in loras
    ]
    return architecture.lora.component, held_elements(Adapter(layout) for layout in layouts)


def short_id(digest: str | None) -> str:
    """The 12-hex-digit ID that `list` and `ps` show."""
    if not digest:
        return ""
    return digest.split(":", 1)[-1][:12]


def canonical(name: str) -> str:
    return str(ModelName.parse(name))


def models() -> list:
    """Every readable model in the store (its `name`, `modified` time and `manifest`), newest first."""
    return [entry for entry in _store().list() if entry.manifest is not None]


def tags() -> list[dict]:
    """Every readable model in the store, as ollama's /api/tags lists them."""
    return [
        {
            "name": str(entry.name),
            "model": str(entry.name),
            "modified_at": utc_iso(entry.modified),
            "size": entry.manifest.total_size,
            "digest": entry.manifest.digest,
            "details": _details(entry.manifest.config),
        }
        for entry in models()
    ]


def show(name: str) -> dict:
    """What /api/show answers: the model's details, its config, its memory needs, and its layers; as
    ollama's, its `parameters` as text (`name value` a line), its `license` and its `modelfile`; and
    its `adapters` (name, digest, scale)."""
    from ollama_img.modelfile import parameters_text
    from ollama_img.store.additions import licenses_of
    from ollama_img.store.from_modelfile import modelfile_of

    store = _store()
    manifest = store.manifest(name)
    config = manifest.config
    return {
        "name": canonical(name),
        "digest": manifest.digest,
        "size": manifest.total_size,
        "details": _details(config),
        "model_info": config.to_json(),
        "parameters": parameters_text(config.params),
        "adapters": [adapter.to_json() for adapter in config.adapters],
        "license": "\n".join(licenses_of(store, manifest, strict=False)),
        "modelfile": modelfile_of(store, manifest),
        "memory": memory_report(store, name),
        "layers": [layer.to_json() for layer in manifest.layers],
    }


def memory_report(store, name: str) -> dict | None:
    """The model's memory needs at its default size (`memory.plan.report`), on the back end installed
    here, within OLLAMA_IMG_GPU_MEMORY when set; None for a model whose architecture this version lacks
    or whose blobs are damaged."""
    from ollama_img.engine.memory import planner_for
    from ollama_img.errors import UserError
    from ollama_img.memory.budget import user_budget
    from ollama_img.memory.device import installed_device_kind
    from ollama_img.memory.plan import report

    device = installed_device_kind()
    try:  # a damaged model (a missing blob) has no estimate: `show` names the damage instead
        profile = planner_for(name, device, store).profile
    except (UserError, KeyError, TypeError, ValueError):
        return None
    return report(profile, device, user_budget())


def _details(config: ModelConfig) -> dict:
    family = config.family
    count = config.parameter_count
    return {
        "format": config.format,
        "family": family,
        "families": [family] if family else [],
        "parameter_size": human_count(count) if count is not None else None,
        "quantization_level": config.quantization.type if config.quantization else None,
    }
