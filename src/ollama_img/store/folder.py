"""Inspect a diffusers model folder before importing it: what to store, and whether it is complete.

Everything a user can get wrong about a folder is found here, before the store is touched: a missing
folder, `model_index.json` or component, a missing required file, an unknown architecture, a corrupt
JSON file, a truncated or corrupt safetensors file, an index naming a shard that is not there. What a
component must contain comes from the architecture table (`ollama_img.models`), not from this module.
"""

import json
import math
from dataclasses import dataclass
from pathlib import Path

from ollama_img.errors import UserError
from ollama_img.models import Architecture, Component, architecture_for
from ollama_img.models.interface import Capabilities
from ollama_img.store.blobs import BlobRef
from ollama_img.store.config import QuantizationRecord
from ollama_img.store.safetensors_format import Header
from ollama_img.store.source import read_header

MODEL_INDEX = "model_index.json"


@dataclass(frozen=True)
class FileItem:
    """A non-weight file stored as one layer, named by its path in the folder."""

    layer_name: str  # "model_index.json", "tokenizer/tokenizer.json"
    path: Path
    size: int


@dataclass(frozen=True)
class Shard:
    """One safetensors file of a component, with its validated header."""

    layer_prefix: str  # the component name
    path: Path
    display: str  # the path relative to the folder, for messages
    header: Header
    stored: BlobRef | None = None  # set when the file is a store blob holding its one tensor as `data`


@dataclass(frozen=True)
class ComponentPlan:
    name: str
    class_name: str | None  # from model_index.json, e.g. "ZImageTransformer2DModel"
    files: tuple[FileItem, ...]
    shards: tuple[Shard, ...]

    @property
    def tensor_count(self) -> int:
        return sum(len(s.header.tensors) for s in self.shards)

    @property
    def tensor_bytes(self) -> int:
        return sum(t.nbytes for s in self.shards for t in s.header.tensors)

    @property
    def parameters(self) -> int:
        return sum(math.prod(t.shape) for s in self.shards for t in s.header.tensors)

    @property
    def dtypes(self) -> list[str]:
        return sorted({t.dtype for s in self.shards for t in s.header.tensors})


@dataclass(frozen=True)
class ImportPlan:
    """Everything `create` will store, in manifest order: top-level files, then each component."""

    origin: str  # where it comes from, for messages: the folder, or "model 'NAME'"
    architecture: Architecture
    files: tuple[FileItem, ...]  # top-level files (model_index.json)
    components: tuple[ComponentPlan, ...]
    capabilities: Capabilities  # what the model can do, from its config files
    quantization: QuantizationRecord | None = None  # the record of weights that arrive quantized already

    @property
    def tensor_count(self) -> int:
        return sum(c.tensor_count for c in self.components)

    @property
    def tensor_bytes(self) -> int:
        return sum(c.tensor_bytes for c in self.components)


def inspect_folder(folder: Path | str) -> ImportPlan:
    """Validate a model folder and return what importing it will store; a UserError names any problem."""
    folder = Path(folder).expanduser()
    if not folder.exists():
        raise UserError(f"model folder {folder} does not exist")
    if not folder.is_dir():
        raise UserError(f"{folder} is not a folder (expected a diffusers model folder)")
    index_path = folder / MODEL_INDEX
    if not index_path.is_file():
        raise UserError(f"{folder} has no {MODEL_INDEX}: expected a diffusers model folder")
    model_index = _read_json(index_path, MODEL_INDEX)
    if not isinstance(model_index, dict):
        raise UserError(f"{MODEL_INDEX} in {folder} is not a JSON object")
    if "_class_name" not in model_index:
        raise UserError(f"{MODEL_INDEX} in {folder} has no _class_name")
    architecture = architecture_for(model_index["_class_name"])
    components = tuple(_inspect_component(folder, c, model_index) for c in architecture.components)
    files = (FileItem(MODEL_INDEX, index_path, index_path.stat().st_size),)
    capabilities = capabilities_of(architecture, components, str(folder))
    return ImportPlan(str(folder), architecture, files, components, capabilities)


def capabilities_of(
    architecture: Architecture, components: tuple[ComponentPlan, ...], origin: str
) -> Capabilities:
    """The capabilities the family reads from the model's config files, or a UserError saying why not."""
    files = {item.layer_name: item for component in components for item in component.files}

    def read_json(relpath: str) -> dict:
        return _read_json(files[relpath].path, relpath)

    try:
        return architecture.capabilities(read_json)
    except (KeyError, TypeError, ValueError) as exc:
        raise UserError(f"{origin}: unsupported or invalid configuration ({exc})") from None


def _inspect_component(folder: Path, component: Component, model_index: dict) -> ComponentPlan:
    directory = folder / component.name
    if not directory.is_dir():
        raise UserError(f"missing component folder '{component.name}/' in {folder}")
    files = []
    for file_name in component.required_files:
        if not (directory / file_name).is_file():
            raise UserError(f"missing file '{component.name}/{file_name}' in {folder}")
        files.append(file_name)
    files += [f for f in component.optional_files if (directory / f).is_file()]
    items = []
    for file_name in files:
        path = directory / file_name
        layer_name = f"{component.name}/{file_name}"
        if file_name.endswith(".json"):
            _read_json(path, layer_name)
        items.append(FileItem(layer_name, path, path.stat().st_size))
    shards = _inspect_weights(folder, directory, component) if component.weights else ()
    entry = model_index.get(component.name)
    class_name = (
        entry[1] if isinstance(entry, list) and len(entry) == 2 and isinstance(entry[1], str) else None
    )
    return ComponentPlan(component.name, class_name, tuple(items), shards)


def weight_files(directory: Path, component: Component) -> list[Path]:
    """The safetensors files of a component's weights, as diffusers picks them: `<stem>.safetensors`, else
    the shards its index names (never other files there, such as `<stem>.fp16.safetensors` variants)."""
    return _weight_files(directory, component)[0]


def _weight_files(directory: Path, component: Component) -> tuple[list[Path], dict[str, str] | None]:
    stem, name = component.weights, component.name
    single = directory / f"{stem}.safetensors"
    index_path = directory / f"{stem}.safetensors.index.json"
    if single.is_file():
        return [single], None
    if index_path.is_file():
        weight_map = read_weight_map(index_path, f"{name}/{index_path.name}")
        shard_names = sorted(set(weight_map.values()))
        for shard in shard_names:
            if not (directory / shard).is_file():
                raise UserError(
                    f"{name}/{index_path.name} names shard '{shard}', which is missing from {directory}"
                )
        return [directory / shard for shard in shard_names], weight_map
    other = sorted(p.name for p in directory.glob(f"{stem}*.bin"))
    hint = f" (found {other[0]}: only safetensors weights are supported)" if other else ""
    raise UserError(f"missing weights in '{name}/': expected {single.name} or {index_path.name}{hint}")


def _inspect_weights(folder: Path, directory: Path, component: Component) -> tuple[Shard, ...]:
    """The component's safetensors files (`weight_files`), each header validated against the index."""
    name = component.name
    paths, weight_map = _weight_files(directory, component)
    index_name = f"{component.weights}.safetensors.index.json"
    shards = []
    seen: dict[str, str] = {}
    for path in paths:
        display = f"{name}/{path.name}"
        header = read_header(path, display)
        for tensor in header.tensors:
            if tensor.name in seen:
                raise UserError(f"tensor {tensor.name!r} is in both {seen[tensor.name]} and {display}")
            seen[tensor.name] = display
        shards.append(Shard(name, path, display, header))
    if weight_map is not None:
        for tensor_name, shard_name in weight_map.items():
            if seen.get(tensor_name) != f"{name}/{shard_name}":
                raise UserError(
                    f"{name}/{index_name} puts tensor {tensor_name!r} in {shard_name}, "
                    "but that shard does not hold it"
                )
    return tuple(shards)


def read_weight_map(path: Path, display: str) -> dict[str, str]:
    index = _read_json(path, display)
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise UserError(f"{display} has no weight_map")
    for shard in weight_map.values():
        if not isinstance(shard, str) or "/" in shard or "\\" in shard or shard in ("", ".", ".."):
            raise UserError(f"{display} names an invalid shard file {shard!r}")
    return weight_map


def _read_json(path: Path, display: str):
    try:
        return json.loads(path.read_bytes())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{display} is not valid JSON: {exc}") from None
    except OSError as exc:
        raise UserError(f"cannot read {display}: {exc.strerror or exc}") from None
