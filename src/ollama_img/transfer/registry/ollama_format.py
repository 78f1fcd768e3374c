"""ollama's image models (`ollama pull x/z-image-turbo`) and how they become ollama-img models.

What ollama's sources establish (x/imagegen and x/create, up to the commit that removed image generation;
docs/ollama-compatibility.md has the details): the manifest is docker v2 schema 2 like ours, with one
`application/vnd.ollama.image.tensor` layer per tensor named `component/tensor` and one
`application/vnd.ollama.image.json` layer per config file named by its path. The differences:

- the config blob is ollama's ConfigV2 (`model_format: safetensors`, `capabilities: ["image"]`), not ours;
- the `model_index.json` layer was rewritten: `_class_name` became `architecture`, `_diffusers_version`
  was dropped, `parameter_count` and `quantization` were added;
- a plain tensor's blob keys its one tensor by `data` (the first releases) or by the tensor's name;
- a quantized weight's blob holds `NAME`, `NAME.scale` and (affine modes) `NAME.bias`, with `quant_type`
  and `group_size` in its metadata, where ollama-img's holds `weight`, `scales`, `biases` with `mode`,
  `bits` and `group_size`. The packed bytes are MLX's `quantize` output in both.

So such a model is converted while it is pulled: its model_index.json is restored, quantized weights
are rewritten with ollama-img's tensor names and metadata (same bytes), and the importer stores the
rest as `create` would (blobs already in ollama-img's layout are kept as they are). What cannot be
converted (a language model, packed expert blobs, a missing file) is one clear line naming it.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
from pathlib import Path

from ollama_img.errors import UserError
from ollama_img.models import Component, architecture_for
from ollama_img.names import ModelName
from ollama_img.store import Manifest, Store, import_folder
from ollama_img.store.additions import Additions
from ollama_img.store.blobs import PLAIN_TENSOR_NAME, BlobRef, write_tensor_blob
from ollama_img.store.config import QuantizationRecord
from ollama_img.store.folder import MODEL_INDEX, ComponentPlan, FileItem, ImportPlan, Shard, capabilities_of
from ollama_img.store.manifest import JSON_MEDIA_TYPE, LICENSE_MEDIA_TYPE, TENSOR_MEDIA_TYPE, TEXT_MEDIA_TYPE
from ollama_img.store.safetensors_format import DTYPE_SIZES, Header, TensorEntry, TensorInfo
from ollama_img.store.source import SafetensorsReader, read_header
from ollama_img.transfer.registry.remote_manifest import RemoteBlob, RemoteManifest

NATIVE = "ollama-img"
OLLAMA = "ollama"

OLLAMA_MODEL_LAYER = "application/vnd.ollama.image.model"  # GGUF weights of a language model
_CONTAINER_LAYER_PREFIXES = ("application/vnd.oci.image.layer.", "application/vnd.docker.image.rootfs.")
_OLLAMA_INDEX_ADDITIONS = ("architecture", "parameter_count", "quantization")

# ollama's quant_type -> (ollama-img's type, MLX mode, bits, ollama's default group size)
_QUANT_TYPES = {
    "int4": ("int4", "affine", 4, 32),
    "int8": ("int8", "affine", 8, 64),
    "nvfp4": ("nvfp4", "nvfp4", 4, 16),
    "mxfp4": ("mxfp4", "mxfp4", 4, 32),
    "mxfp8": ("fp8", "mxfp8", 8, 32),
}


def classify(remote: RemoteManifest, config_bytes: bytes, label: str) -> str:
    """NATIVE for an ollama-img model, OLLAMA for an ollama image model; anything else is refused."""
    try:
        config = json.loads(config_bytes)
    except (UnicodeDecodeError, ValueError):
        raise UserError(
            f"'{label}' has a config blob that is not JSON: it is not a model ollama-img can run"
        ) from None
    if isinstance(config, dict) and config.get("format") == "diffusers":
        return NATIVE
    types = {layer.media_type for layer in remote.layers}
    if OLLAMA_MODEL_LAYER in types:
        raise UserError(f"'{label}' is an ollama language model (GGUF weights), not an image model")
    if TENSOR_MEDIA_TYPE in types and any(layer.name == MODEL_INDEX for layer in remote.layers):
        return OLLAMA
    if any(t.startswith(_CONTAINER_LAYER_PREFIXES) for t in types):
        raise UserError(f"'{label}' is a container image, not a model")
    listed = ", ".join(sorted(types)) or "none"
    raise UserError(f"'{label}' is not a model ollama-img can run (its layer types: {listed})")


def convert(store: Store, name: ModelName, remote: RemoteManifest, config: dict) -> Manifest:
    """Import an ollama image model whose blobs are all in the store, under `name`. Hold `store.writing()`."""
    label = f"ollama model '{name}'"
    layers = {layer.name: layer for layer in remote.layers}
    index_layer = layers.get(MODEL_INDEX)
    model_index = _restored_model_index(store, index_layer, label)
    architecture = architecture_for(model_index.get("_class_name"))
    quantized: dict[str, int] = {}
    quant_seen: set[tuple[str, str, int, int]] = set()
    with tempfile.TemporaryDirectory(prefix="ollama-img-convert-") as scratch:
        index_path = Path(scratch) / MODEL_INDEX
        index_path.write_text(json.dumps(model_index, indent=2) + "\n", encoding="utf-8")
        components = []
        for component in architecture.components:
            components.append(
                _component_plan(store, component, remote, model_index, label, quantized, quant_seen)
            )
        plan = ImportPlan(
            origin=label,
            architecture=architecture,
            files=(FileItem(MODEL_INDEX, index_path, index_path.stat().st_size),),
            components=tuple(components),
            capabilities=capabilities_of(architecture, tuple(components), label),
            quantization=_quantization_record(quant_seen, quantized, label),
        )
        return import_folder(
            store, name, plan, additions=Additions(licenses=_licenses(store, remote))
        ).manifest


def _licenses(store: Store, remote: RemoteManifest) -> tuple[str, ...]:
    """The texts of the model's LICENSE layers (ollama's create writes a Modelfile's, as we do)."""
    texts = []
    for layer in remote.layers:
        if layer.media_type == LICENSE_MEDIA_TYPE:
            try:
                texts.append(store.blob_path(layer.digest).read_text(encoding="utf-8"))
            except UnicodeDecodeError:
                raise UserError(f"the license layer {layer.digest[:19]}... is not UTF-8 text") from None
    return tuple(texts)


def _restored_model_index(store: Store, layer: RemoteBlob | None, label: str) -> dict:
    """model_index.json as diffusers wrote it: `_class_name` back in place of ollama's `architecture`."""
    if layer is None:
        raise UserError(f"{label} has no {MODEL_INDEX} layer")
    try:
        index = json.loads(store.blob_path(layer.digest).read_bytes())
    except (UnicodeDecodeError, ValueError):
        raise UserError(f"{label}: its {MODEL_INDEX} is not JSON") from None
    if not isinstance(index, dict):
        raise UserError(f"{label}: its {MODEL_INDEX} is not a JSON object")
    if "_class_name" not in index and isinstance(index.get("architecture"), str):
        index = {"_class_name": index["architecture"], **index}
    for key in _OLLAMA_INDEX_ADDITIONS:
        index.pop(key, None)
    return index


def _component_plan(
    store, component: Component, remote, model_index, label, quantized, quant_seen
) -> ComponentPlan:
    prefix = component.name + "/"
    files = {
        layer.name: layer
        for layer in remote.layers
        if layer.name.startswith(prefix) and layer.media_type in (JSON_MEDIA_TYPE, TEXT_MEDIA_TYPE)
    }
    items = []
    for file_name in (*component.required_files, *component.optional_files):
        layer = files.get(prefix + file_name)
        if layer is None:
            if file_name in component.required_files:
                raise UserError(f"{label} lacks {prefix}{file_name}, which ollama-img needs to run it")
            continue
        items.append(FileItem(layer.name, store.blob_path(layer.digest), layer.size))
    shards = []
    if component.weights:
        tensors = [
            layer
            for layer in remote.layers
            if layer.name.startswith(prefix) and layer.media_type == TENSOR_MEDIA_TYPE
        ]
        if not tensors:
            raise UserError(f"{label} has no tensors for its {component.name}")
        for layer in tensors:
            shards.append(_shard(store, component.name, layer, label, quantized, quant_seen))
    entry = model_index.get(component.name)
    class_name = (
        entry[1] if isinstance(entry, list) and len(entry) == 2 and isinstance(entry[1], str) else None
    )
    return ComponentPlan(component.name, class_name, tuple(items), tuple(shards))


def _shard(store, component: str, layer: RemoteBlob, label, quantized, quant_seen) -> Shard:
    """The layer's blob as a one-tensor shard named by its logical name (quantized ones rewritten first)."""
    path = store.blob_path(layer.digest)
    logical = layer.name[len(component) + 1 :]
    header = read_header(path, f"the blob of {layer.name} in {label}")
    if len(header.tensors) == 1:
        (tensor,) = header.tensors
        renamed = dataclasses.replace(header, tensors=(dataclasses.replace(tensor, name=logical),))
        stored = (
            BlobRef(layer.digest, layer.size)
            if tensor.name == PLAIN_TENSOR_NAME and not header.metadata
            else None
        )
        return Shard(component, path, layer.name, renamed, stored=stored)
    if header.metadata.get("quant_type"):
        ref, info, kind = _rewrite_quantized(store, path, header, layer.name, label)
        quantized[component] = quantized.get(component, 0) + 1
        quant_seen.add(kind)
        return Shard(
            component, path, layer.name, Header((dataclasses.replace(info, name=logical),), {}), stored=ref
        )
    names = ", ".join(t.name for t in header.tensors[:4])
    raise UserError(
        f"{label}: the blob of {layer.name} packs several tensors ({names}, ...); "
        "ollama-img stores one tensor per layer and cannot convert it"
    )


def _rewrite_quantized(store: Store, path: Path, header: Header, layer_name: str, label: str):
    """Write ollama's quantized weight as ollama-img's: the same packed bytes, our names and metadata.

    Returns the new blob, a TensorInfo with the weight's logical dtype and shape, and the type's key.
    """
    by_name = {t.name: t for t in header.tensors}
    kind = header.metadata.get("quant_type", "").lower()
    if kind not in _QUANT_TYPES:
        raise UserError(f"{label}: {layer_name} uses ollama's quantization {kind!r}, which ollama-img lacks")
    ours, mode, bits, default_group = _QUANT_TYPES[kind]
    group = int(header.metadata.get("group_size") or default_group)
    weight = next((t for t in header.tensors if f"{t.name}.scale" in by_name), None)
    if weight is None or weight.dtype != "U32" or len(weight.shape) != 2:
        raise UserError(f"{label}: {layer_name} is not laid out as ollama's quantized weights are")
    scales = by_name[f"{weight.name}.scale"]
    biases = by_name.get(f"{weight.name}.bias")
    rows, packed = weight.shape
    columns = packed * 32 // bits
    if scales.shape != (rows, columns // group) or (mode == "affine") != (biases is not None):
        raise UserError(f"{label}: {layer_name} has scales that do not fit its {kind} weight")
    logical_dtype = scales.dtype if mode == "affine" else "BF16"
    parts = [("weight", weight), ("scales", scales)] + ([("biases", biases)] if biases is not None else [])
    metadata = {"quantization": ours, "mode": mode, "bits": str(bits), "group_size": str(group)}
    with SafetensorsReader(path, header, f"the blob of {layer_name}") as reader:
        tensors = [(TensorEntry(new, t.dtype, t.shape), reader.chunks(t)) for new, t in parts]
        ref = write_tensor_blob(store.blobs_dir, tensors, metadata)
    nbytes = rows * columns * DTYPE_SIZES[logical_dtype]
    return ref, TensorInfo(layer_name, logical_dtype, (rows, columns), 0, nbytes), (ours, mode, bits, group)


def _quantization_record(kinds: set, counts: dict[str, int], label: str) -> QuantizationRecord | None:
    if not kinds:
        return None
    if len(kinds) > 1:
        raise UserError(f"{label} mixes several quantization types ({sorted(k[0] for k in kinds)})")
    ((ours, mode, bits, group),) = kinds
    return QuantizationRecord(
        type=ours,
        mode=mode,
        bits=bits,
        group_size=group,
        rule="as ollama quantized it (every Linear weight outside the VAE, embeddings and norms)",
        tensors=counts,
    )
