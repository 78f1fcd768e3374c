"""What a Modelfile adds to a model's weights: its adapter, params and license layers, and their record.

Each adapter is its safetensors file stored as it came, one blob named by the SHA-256 of its bytes (so
a file is stored once, whatever uses it, and `rm` frees it with the last model that does); the
PARAMETERs are one JSON blob; each LICENSE is one text blob. In the manifest they follow the weights'
layers, in that order (media types in `manifest`):

    adapters/<file name>   application/vnd.ollama.image.adapter   one per ADAPTER, in the order they apply
    params                 application/vnd.ollama.image.params    {"steps": 12, "negative_prompt": "..."}
    license                application/vnd.ollama.image.license   one per LICENSE

The config record says the same for readers that do not open blobs: `ModelConfig.adapters` (digest,
scale, file name), `.params` and `.base` (the store model it was made FROM).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from ollama_img.errors import UserError
from ollama_img.store.blobs import (
    BlobRef,
    blob_intact,
    digest_of_file_name,
    write_bytes_blob,
    write_file_blob,
)
from ollama_img.store.config import AdapterRecord, ModelConfig
from ollama_img.store.manifest import (
    ADAPTER_MEDIA_TYPE,
    LICENSE_MEDIA_TYPE,
    PARAMS_MEDIA_TYPE,
    Layer,
    Manifest,
)
from ollama_img.store.source import read_header
from ollama_img.store.store import Store

ADAPTERS_FOLDER = "adapters"
PARAMS_LAYER = "params"
LICENSE_LAYER = "license"


@dataclass(frozen=True)
class AdapterSource:
    """An adapter to add: a file to store (`path`), or a blob the store has already (`blob`)."""

    name: str  # its file's name, as the record keeps it
    scale: float
    path: Path | None = None
    blob: BlobRef | None = None


@dataclass(frozen=True)
class Additions:
    """Everything a model gets beyond its weights and files."""

    adapters: tuple[AdapterSource, ...] = ()
    params: dict[str, object] = field(default_factory=dict)
    licenses: tuple[str, ...] = ()
    base: str | None = None  # the store model it is made from


def inherited(store: Store, manifest: Manifest) -> Additions:
    """What a stored model adds to its weights, to build on: FROM a model keeps its adapters (a
    Modelfile's come after them), its parameters (a Modelfile's replace those of the same name) and its
    license (unless a Modelfile gives one)."""
    layers = {layer.digest: layer for layer in manifest.layers_of_type(ADAPTER_MEDIA_TYPE)}
    adapters = []
    for record in manifest.config.adapters:
        layer = layers.get(record.digest)
        if layer is None:
            raise UserError(
                f"model '{manifest.name}' is damaged: its record names adapter {record.digest[:19]}..., "
                "which it has no layer for; re-create the model"
            )
        name = record.name or layer.name.removeprefix(f"{ADAPTERS_FOLDER}/")
        adapters.append(AdapterSource(name, record.scale, blob=BlobRef(layer.digest, layer.size)))
    return Additions(tuple(adapters), dict(manifest.config.params), licenses_of(store, manifest))


def licenses_of(store: Store, manifest: Manifest, strict: bool = True) -> tuple[str, ...]:
    """The texts of a model's license layers; one that cannot be read is a UserError, or left out
    when not `strict` (`show` flags a damaged model and shows the rest)."""
    texts = []
    for layer in manifest.layers_of_type(LICENSE_MEDIA_TYPE):
        try:
            texts.append(store.blob_path(layer.digest).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as exc:
            if strict:
                raise UserError(
                    f"model '{manifest.name}' is damaged: its license blob cannot be read ({exc})"
                ) from None
    return tuple(texts)


def adapter_names(store: Store, first: Manifest | None = None) -> dict[str, str]:
    """digest -> file name of every adapter the store's models record (those of `first` win, then the
    models in name order): an ADAPTER line that names a blob of the store gets its file's name back."""
    names: dict[str, str] = {}
    entries = sorted(
        (e for e in store.list() if e.manifest is not None), key=lambda e: str(e.name), reverse=True
    )
    manifests = [e.manifest for e in entries] + ([first] if first is not None else [])
    for manifest in manifests:
        names.update({a.digest: a.name for a in manifest.config.adapters if a.name})
    return names


def adapter_from_file(store: Store, path: Path, scale: float, names: dict[str, str]) -> AdapterSource:
    """An adapter file checked as far as the store can tell: a readable safetensors file with tensors
    (whether its tensors fit the base is the family's question). A blob of this store (the path `show
    --modelfile` writes) is used where it is, under the name the store knows it by."""
    if not path.exists():
        raise UserError(f"adapter file {path} does not exist")
    if not path.is_file():
        raise UserError(f"adapter {path} is not a file (expected a LoRA .safetensors file)")
    try:
        header = read_header(path)
    except UserError as exc:
        raise UserError(f"{exc} (an ADAPTER is a LoRA .safetensors file)") from None
    if not header.tensors:
        raise UserError(f"adapter {path} holds no tensors")
    digest = digest_of_file_name(path.name)
    size = path.stat().st_size
    in_store = digest is not None and path.parent.resolve() == store.blobs_dir.resolve()
    if in_store and blob_intact(path, digest, size):
        return AdapterSource(names.get(digest, path.name), scale, blob=BlobRef(digest, size))
    return AdapterSource(path.name, scale, path=path)


def write_additions(store: Store, additions: Additions) -> tuple[list[Layer], int]:
    """Store the additions' blobs; their layers, in manifest order, and how many blobs were new. Hold
    `store.writing()`. An adapter already in the store must still be there (an `rm` may have freed it)."""
    layers = []
    new = 0
    for adapter in additions.adapters:
        if adapter.blob is not None:
            blob = adapter.blob
            if not blob_intact(store.blob_path(blob.digest), blob.digest, blob.size):
                raise UserError(
                    f"adapter {adapter.name} ({blob.digest[:19]}...) is no longer in the store "
                    "(removed meanwhile?); run create again"
                )
        else:
            try:
                written = write_file_blob(store.blobs_dir, adapter.path)
            except OSError as exc:
                raise UserError(f"cannot read adapter {adapter.path}: {exc.strerror or exc}") from None
            blob, new = written, new + written.new
        layers.append(Layer(f"{ADAPTERS_FOLDER}/{adapter.name}", blob.digest, blob.size, ADAPTER_MEDIA_TYPE))
    small = [(PARAMS_LAYER, PARAMS_MEDIA_TYPE, encode_params(additions.params))] if additions.params else []
    small += [(LICENSE_LAYER, LICENSE_MEDIA_TYPE, text.encode("utf-8")) for text in additions.licenses]
    for layer_name, media_type, data in small:
        written = write_bytes_blob(store.blobs_dir, data)
        new += written.new
        layers.append(Layer(layer_name, written.digest, written.size, media_type))
    return layers, new


def encode_params(params: dict[str, object]) -> bytes:
    """The params blob: the PARAMETERs as one JSON object, keys sorted (the same values, the same blob)."""
    return json.dumps(params, sort_keys=True).encode("utf-8")


def with_additions(config: ModelConfig, additions: Additions, layers: list[Layer]) -> ModelConfig:
    """The record of a model whose `layers` are its weights' and then `write_additions`' layers."""
    adapter_layers = [layer for layer in layers if layer.media_type == ADAPTER_MEDIA_TYPE]
    records = tuple(
        AdapterRecord(layer.digest, adapter.scale, adapter.name)
        for adapter, layer in zip(additions.adapters, adapter_layers, strict=True)
    )
    return dataclasses.replace(
        config,
        total_size=sum(layer.size for layer in layers),
        base=additions.base,
        params=dict(sorted(additions.params.items())),
        adapters=records,
    )
