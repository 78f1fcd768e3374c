"""Where a model's files come from: a diffusers model folder or the store, behind one interface.

Model code asks a source for a component's config files and tensors and never learns which kind it
has, so loading from the store and from a folder is one code path. Tensors come from `mx.load`, which
reads safetensors files lazily: only headers are read until a computation needs the tensors. An array
belongs to a stream of the thread that made it and only that thread can evaluate it, so a thread that
reads part of a component asks for those tensors itself (`weights(component, names)`).

A quantized weight (a store model made with `create --quantize`) arrives as `<base>.weight` (packed),
`<base>.scales` and, for affine modes, `<base>.biases`, with its parameters in `ComponentWeights.quantized`.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from ollama_img.backend import require_mlx
from ollama_img.errors import UserError
from ollama_img.phases import timed
from ollama_img.quantization import QuantParams

if TYPE_CHECKING:
    import mlx.core as mx

    from ollama_img.memory.profile import Stored
    from ollama_img.store import Manifest, Store


@dataclass
class ComponentWeights:
    """A component's tensors by checkpoint name, and how each quantized weight is quantized."""

    tensors: dict[str, mx.array]
    quantized: dict[str, QuantParams] = field(default_factory=dict)  # base name ("layers.0.attention.to_q")


class WeightSource(Protocol):
    label: str  # what to call the model in messages: a store name or a folder path
    digest: str | None  # the manifest digest for a store model, None for a folder

    def read_json(self, relpath: str) -> dict: ...

    def read_text(self, relpath: str) -> str | None: ...

    def weights(self, component: str, names: Collection[str] | None = None) -> ComponentWeights:
        """The component's tensors (lazy, made on the calling thread); with `names`, only those (a
        quantized weight's companions come with its weight)."""
        ...

    def stored(self) -> dict[str, Stored]:
        """Each component's stored bytes and quantization (no MLX: the memory planner reads it)."""
        ...


class FolderSource:
    """A model folder in the Hugging Face diffusers layout."""

    def __init__(self, root: Path | str):
        self.root = Path(root).expanduser().resolve()
        self.label = str(self.root)
        self.digest = None
        self._holds: dict[str, dict[str, Path]] = {}  # component -> tensor name -> its file, once read
        if not (self.root / "model_index.json").is_file():
            raise UserError(f"{self.root} is not a model folder: model_index.json is missing")

    def read_text(self, relpath: str) -> str | None:
        path = self.root / relpath
        return path.read_text(encoding="utf-8") if path.is_file() else None

    def read_json(self, relpath: str) -> dict:
        text = self.read_text(relpath)
        if text is None:
            raise UserError(f"{self.label}: {relpath} is missing")
        return _parse_json(text, f"{self.label}/{relpath}")

    @timed("read")
    def weights(self, component: str, names: Collection[str] | None = None) -> ComponentWeights:
        """The component's tensors, from the files the importer would store (`store.folder.weight_files`)."""
        mx = require_mlx()
        files = self._files_of(component) if names is None else self._files_holding(component, names)
        out: dict[str, mx.array] = {}
        holds: dict[str, Path] = {}
        for f in files:
            try:
                arrays = mx.load(str(f))
            except Exception as exc:  # mlx raises RuntimeError/ValueError for malformed files
                raise UserError(f"{self.label}: cannot read {component}/{f.name}: {exc}") from None
            out.update(arrays if names is None else {k: v for k, v in arrays.items() if k in names})
            if names is None:
                holds.update(dict.fromkeys(arrays, f))
        if names is None:
            self._holds[component] = holds
        return ComponentWeights(out)

    def _files_of(self, component: str) -> list[Path]:
        from ollama_img.models import architecture_for
        from ollama_img.store.folder import weight_files

        architecture = architecture_for(self.read_json("model_index.json").get("_class_name"))
        declared = {c.name: c for c in architecture.components if c.weights}
        if component not in declared:
            raise UserError(f"{self.label}: {architecture.class_name} has no weights in {component}/")
        return weight_files(self.root / component, declared[component])

    def _files_holding(self, component: str, names: Collection[str]) -> list[Path]:
        """The files that hold `names`, in file order (known once the component was read whole)."""
        holds = self._holds.get(component)
        if holds is None:
            return self._files_of(component)
        wanted = {holds[name] for name in names if name in holds}
        return [f for f in dict.fromkeys(holds.values()) if f in wanted]

    def stored(self) -> dict[str, Stored]:
        """The tensors the importer would store, by component (their headers; a folder is never quantized)."""
        from ollama_img.memory.profile import Stored, upcast_bytes
        from ollama_img.store.folder import inspect_folder

        out = {}
        for component in inspect_folder(self.root).components:
            tensors = [t for shard in component.shards for t in shard.header.tensors]
            if tensors:
                upcast = sum(upcast_bytes(t.name, t.dtype, t.shape, t.nbytes) for t in tensors)
                out[component.name] = Stored(sum(t.nbytes for t in tensors), upcast=upcast)
        return out


class StoreSource:
    """A model in the store: each tensor layer is a blob that `mx.load` maps directly."""

    def __init__(self, store: Store, name: str):
        from ollama_img.store.verify import check_before_loading

        self.store = store
        self.manifest: Manifest = store.manifest(name)
        check_before_loading(store, self.manifest)  # a damaged blob must never make an image
        self.label = str(self.manifest.name)
        self.digest = self.manifest.digest
        self._layers = {layer.name: layer for layer in self.manifest.layers}

    def read_text(self, relpath: str) -> str | None:
        layer = self._layers.get(relpath)
        if layer is None:
            return None
        return self.store.blob_path(layer.digest).read_text(encoding="utf-8")

    def read_json(self, relpath: str) -> dict:
        text = self.read_text(relpath)
        if text is None:
            raise UserError(f"{self.label}: the store has no {relpath} for this model")
        return _parse_json(text, f"{self.label}:{relpath}")

    @timed("read")
    def weights(self, component: str, names: Collection[str] | None = None) -> ComponentWeights:
        from ollama_img.store import PLAIN_TENSOR_NAME, TENSOR_MEDIA_TYPE

        mx = require_mlx()
        prefix = component + "/"
        out = ComponentWeights({})
        for name, layer in self._layers.items():
            if not name.startswith(prefix) or layer.media_type != TENSOR_MEDIA_TYPE:
                continue
            tensor_name = name[len(prefix) :]
            if names is not None and tensor_name not in names:
                continue
            path = self.store.blob_path(layer.digest)
            try:
                arrays, metadata = mx.load(str(path), format="safetensors", return_metadata=True)
            except Exception as exc:
                raise UserError(
                    f"{self.label}: blob for {name} is unreadable ({exc}); re-create the model"
                ) from None
            if set(arrays) == {PLAIN_TENSOR_NAME}:
                out.tensors[tensor_name] = arrays[PLAIN_TENSOR_NAME]
            else:  # a quantized weight: packed weight plus its companions, named after the weight
                base = tensor_name.removesuffix(".weight")
                out.tensors.update({f"{base}.{key}": value for key, value in arrays.items()})
                where = f"{self.label}: {name}"
                out.quantized[base] = QuantParams.from_metadata(metadata, layer.dtype or "BF16", where)
        if not out.tensors:
            raise UserError(f"{self.label}: the store has no tensors for {component}")
        return out

    def stored(self) -> dict[str, Stored]:
        return stored_of_manifest(self.manifest)


def stored_of_manifest(manifest: Manifest) -> dict[str, Stored]:
    """Each component's tensor bytes in a manifest, and the quantization its record gives it."""
    from ollama_img.memory.profile import Stored, upcast_bytes
    from ollama_img.quantization import TYPES

    record = manifest.config.quantization
    sizes: dict[str, int] = {}
    upcast: dict[str, int] = {}
    for layer in manifest.layers:
        if layer.is_tensor:
            sizes[layer.component] = sizes.get(layer.component, 0) + layer.size
            extra = upcast_bytes(layer.name, layer.dtype, layer.shape, layer.size)
            upcast[layer.component] = upcast.get(layer.component, 0) + extra
    out = {}
    for name, size in sizes.items():
        quantized = record is not None and record.tensors.get(name)
        quant = TYPES.get(record.type) if quantized else None
        mode = quant.mode if quant else (record.mode if quantized else None)
        out[name] = Stored(size, record.type if quantized else None, mode, upcast[name])
    return out


def _parse_json(text: str, where: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"{where} is not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(value, dict):
        raise UserError(f"{where} is not a JSON object")
    return value


def open_source(name_or_folder: str | Path, store: Store | None = None) -> WeightSource:
    """A folder path (anything that is a directory) or else a model name in the store."""
    path = Path(name_or_folder).expanduser()
    if path.is_dir():
        return FolderSource(path)
    from ollama_img.store import Store

    return StoreSource(store or Store(), str(name_or_folder))
