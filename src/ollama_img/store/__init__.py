"""The model store: content-addressed blobs plus one manifest per model name, as ollama keeps them.

Public API (what the loader, the engine and the CLI use):

    store = Store(root=None)                 # root defaults to models_dir(): OLLAMA_IMG_MODELS or the data dir
    manifest = store.manifest("z-image")     # Manifest, or NotFound with a "did you mean ..." hint
    manifest.layers                          # tuple[Layer]: name, digest, size, media_type, dtype, shape
    manifest.component_layers("transformer") # the layers of one component, in checkpoint order
    manifest.layer("transformer/config.json")
    manifest.config                          # ModelConfig (store/config.py): architecture, family, format,
                                             #   components, parameter_count, quantization, capabilities,
                                             #   total_size; from a Modelfile: base, params, adapters
    manifest.weight_layers()                 # the layers without a Modelfile's adapter/params/license ones
    manifest.digest, manifest.id             # "sha256:<hex>" of the manifest bytes; its first 12 hex digits
    manifest.name                            # the ModelName it was read under
    manifest.total_size                      # bytes of every blob it uses (what `list` shows)
    store.blob_path(layer.digest) -> Path    # blobs/sha256-<hex>
    store.list() -> list[ModelEntry]         # name, modified, manifest (None if unreadable), problem
    store.names() -> list[ModelName]
    store.copy(src, dst) -> Manifest
    store.remove([names]) -> Removal         # removed, blobs_removed, bytes_freed

    plan = inspect_folder(path)              # validates a diffusers folder -> ImportPlan (totals for progress)
    plan = plan_from_model(store, name)      # the same from a stored model (`create --from`)
    result = import_folder(store, name, plan, progress=callback, quantize=None)   # ImportResult
                                             # quantize: a QuantType (ollama_img.quantization)
    recipe = from_modelfile.prepare(store, read_modelfile(path))   # `create -f Modelfile` (store/from_modelfile.py):
                                             # recipe.plan to import_folder(..., additions=recipe.additions),
                                             # else from_modelfile.derive(store, name, recipe.base, recipe.additions)
    write_file_blob(store.blobs_dir, path)   # a file stored as it is (an adapter): WrittenBlob

A tensor layer's blob is a safetensors file holding one tensor named `data` (`PLAIN_TENSOR_NAME`).
Blob files have no extension, so load them with the format named:

    mx.load(str(store.blob_path(layer.digest)), format="safetensors")["data"]

A quantized weight's blob holds several named tensors (`weight`, `scales`, `biases`) and string metadata
(`write_tensor_blob`); see `ollama_img.quantization`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

# Each name is imported from its module on first use (PEP 562): `ollama-img list` needs the manifests,
# not the importer, and every command must start fast.
_HOMES = {
    "PLAIN_TENSOR_NAME": "blobs",
    "WrittenBlob": "blobs",
    "write_bytes_blob": "blobs",
    "write_file_blob": "blobs",
    "write_tensor_blob": "blobs",
    "ImportPlan": "folder",
    "inspect_folder": "folder",
    "plan_from_model": "from_model",
    "ImportResult": "importer",
    "import_folder": "importer",
    "ADAPTER_MEDIA_TYPE": "manifest",
    "LICENSE_MEDIA_TYPE": "manifest",
    "PARAMS_MEDIA_TYPE": "manifest",
    "JSON_MEDIA_TYPE": "manifest",
    "TENSOR_MEDIA_TYPE": "manifest",
    "TEXT_MEDIA_TYPE": "manifest",
    "Layer": "manifest",
    "Manifest": "manifest",
    "TensorEntry": "safetensors_format",
    "ModelEntry": "store",
    "Removal": "store",
    "Store": "store",
}

if TYPE_CHECKING:
    from ollama_img.store.blobs import (
        PLAIN_TENSOR_NAME,
        WrittenBlob,
        write_bytes_blob,
        write_file_blob,
        write_tensor_blob,
    )
    from ollama_img.store.folder import ImportPlan, inspect_folder
    from ollama_img.store.from_model import plan_from_model
    from ollama_img.store.importer import ImportResult, import_folder
    from ollama_img.store.manifest import (
        ADAPTER_MEDIA_TYPE,
        JSON_MEDIA_TYPE,
        LICENSE_MEDIA_TYPE,
        PARAMS_MEDIA_TYPE,
        TENSOR_MEDIA_TYPE,
        TEXT_MEDIA_TYPE,
        Layer,
        Manifest,
    )
    from ollama_img.store.safetensors_format import TensorEntry
    from ollama_img.store.store import ModelEntry, Removal, Store


def __getattr__(name: str):
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{home}"), name)
    globals()[name] = value
    return value


__all__ = [
    "ADAPTER_MEDIA_TYPE",
    "JSON_MEDIA_TYPE",
    "LICENSE_MEDIA_TYPE",
    "PARAMS_MEDIA_TYPE",
    "PLAIN_TENSOR_NAME",
    "TENSOR_MEDIA_TYPE",
    "TEXT_MEDIA_TYPE",
    "ImportPlan",
    "ImportResult",
    "Layer",
    "Manifest",
    "ModelEntry",
    "Removal",
    "Store",
    "TensorEntry",
    "WrittenBlob",
    "import_folder",
    "inspect_folder",
    "plan_from_model",
    "write_bytes_blob",
    "write_file_blob",
    "write_tensor_blob",
]
