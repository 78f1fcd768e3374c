"""What the engine asks the model store: does a model exist (and which version), and what to list/show.

Kept in one place so the HTTP routes never depend on the store's internals.
"""

from ollama_img.names import ModelName


def _store():
    from ollama_img.store import Store

    return Store()


def resolve(name: str) -> str | None:
    """The manifest digest of a model, or NotFound (404) with the store's hint."""
    return _store().manifest(name).digest


def short_id(digest: str | None) -> str:
    """The 12-hex-digit ID that `list` and `ps` show."""
    if not digest:
        return ""
    return digest.split(":", 1)[-1][:12]


def canonical(name: str) -> str:
    return str(ModelName.parse(name))


def tags() -> list[dict]:
    """Every model in the store, as ollama's /api/tags lists them."""
    models = []
    for entry in _store().list():
        manifest = entry.manifest if hasattr(entry, "manifest") else entry
        name = str(getattr(entry, "name", ""))
        config = getattr(manifest, "config", {}) or {}
        models.append(
            {
                "name": name,
                "model": name,
                "digest": getattr(manifest, "digest", None),
                "size": config.get("total_size", 0),
                "details": _details(config),
            }
        )
    return models


def show(name: str) -> dict:
    """What /api/show answers: the model's config (architecture, parameters, quantization) and layers."""
    manifest = _store().manifest(name)
    config = manifest.config or {}
    return {
        "name": canonical(name),
        "digest": manifest.digest,
        "details": _details(config),
        "model_info": config,
        "layers": len(manifest.layers),
    }


def _details(config: dict) -> dict:
    return {
        "format": "safetensors",
        "family": config.get("family") or config.get("architecture"),
        "parameter_size": config.get("parameter_size") or config.get("parameters"),
        "quantization_level": config.get("quantization") or config.get("quantization_level"),
    }
