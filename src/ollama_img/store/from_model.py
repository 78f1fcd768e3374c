"""`create NAME --from MODEL`: an import plan whose files and tensors are the blobs of a stored model.

Each tensor blob is a minimal safetensors file holding one tensor named `data`, so it becomes a one-tensor
shard under its logical name and the importer streams it like a checkpoint shard. A tensor that stays as
it is keeps its blob (nothing is read or written for it): quantizing a stored model writes only the
quantized weights and a new config.
"""

import dataclasses

from ollama_img.errors import UserError
from ollama_img.models import architecture_for
from ollama_img.names import ModelName
from ollama_img.store.blobs import PLAIN_TENSOR_NAME, BlobRef
from ollama_img.store.folder import MODEL_INDEX, ComponentPlan, FileItem, ImportPlan, Shard, capabilities_of
from ollama_img.store.manifest import Layer, Manifest
from ollama_img.store.source import read_header
from ollama_img.store.store import Store
from ollama_img.store.verify import check_before_loading


def plan_from_model(store: Store, name: ModelName | str) -> ImportPlan:
    """Plan an import from the stored model `name` (NotFound if there is none; a UserError if it is
    already quantized, since quantizing quantized weights again would only lose precision)."""
    manifest = store.manifest(name)
    config = manifest.config
    if config.quantization is not None:
        raise UserError(
            f"model '{manifest.name}' is already quantized ({config.quantization.type}); "
            "quantize the unquantized model or its folder instead"
        )
    architecture = architecture_for(config.architecture)
    check_before_loading(store, manifest)  # its blobs are reused or read: they must be what they claim
    label = f"model '{manifest.name}'"
    top_level = [layer for layer in manifest.component_layers("") if not layer.from_modelfile]
    if not any(layer.name == MODEL_INDEX for layer in top_level):
        raise UserError(f"{label} is damaged: it has no {MODEL_INDEX}; re-create the model")
    components = []
    for component in architecture.components:
        layers = manifest.component_layers(component.name)
        info = config.components.get(component.name)
        components.append(
            ComponentPlan(
                name=component.name,
                class_name=info.class_name if info else None,
                files=tuple(_file_item(store, layer) for layer in layers if not layer.is_tensor),
                shards=tuple(_tensor_shard(store, manifest, layer) for layer in layers if layer.is_tensor),
            )
        )
    return ImportPlan(
        origin=label,
        architecture=architecture,
        files=tuple(_file_item(store, layer) for layer in top_level),
        components=tuple(components),
        capabilities=capabilities_of(architecture, tuple(components), label),
    )


def _file_item(store: Store, layer: Layer) -> FileItem:
    return FileItem(layer.name, store.blob_path(layer.digest), layer.size)


def _tensor_shard(store: Store, manifest: Manifest, layer: Layer) -> Shard:
    """The layer's blob as a shard holding one tensor under its logical name."""
    path = store.blob_path(layer.digest)
    header = read_header(path, f"the blob of {layer.name} in model '{manifest.name}'")
    tensors = header.tensors
    if (
        len(tensors) != 1
        or tensors[0].name != PLAIN_TENSOR_NAME
        or tensors[0].dtype != layer.dtype
        or tensors[0].shape != layer.shape
    ):
        raise UserError(
            f"model '{manifest.name}' is damaged: the blob of {layer.name} does not hold the "
            f"{layer.dtype} {list(layer.shape or ())} tensor its manifest names; re-create the model"
        )
    component, _, tensor_name = layer.name.partition("/")
    renamed = dataclasses.replace(header, tensors=(dataclasses.replace(tensors[0], name=tensor_name),))
    return Shard(component, path, layer.name, renamed, stored=BlobRef(layer.digest, layer.size))
