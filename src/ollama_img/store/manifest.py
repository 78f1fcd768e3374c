"""Manifests: which blobs make a model, as docker v2 / ollama manifests spell it.

    {"schemaVersion": 2,
     "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
     "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "digest": ..., "size": ...},
     "layers": [{"mediaType": "application/vnd.ollama.image.tensor", "digest": "sha256:...", "size": ...,
                 "name": "transformer/layers.0.attention.to_q.weight", "dtype": "BF16", "shape": [3840, 3840]},
                {"mediaType": "application/vnd.ollama.image.json", "digest": ..., "size": ...,
                 "name": "transformer/config.json"}, ...,
                # a model made by a Modelfile (`ollama_img.store.additions`) also has, after those:
                {"mediaType": "application/vnd.ollama.image.adapter", "name": "adapters/style.safetensors", ...},
                {"mediaType": "application/vnd.ollama.image.params", "name": "params", ...},
                {"mediaType": "application/vnd.ollama.image.license", "name": "license", ...}]}

A layer's name is `<component>/<tensor name as in the checkpoint>` or the file's path in the model
folder. The config blob (JSON) describes the model: `ollama_img.store.config.ModelConfig`.
"""

import dataclasses
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field

from ollama_img.errors import UserError
from ollama_img.models import ARCHITECTURES
from ollama_img.names import ModelName
from ollama_img.store.blobs import is_digest
from ollama_img.store.config import ModelConfig

SCHEMA_VERSION = 2
MANIFEST_MEDIA_TYPE = "application/vnd.docker.distribution.manifest.v2+json"
CONFIG_MEDIA_TYPE = "application/vnd.docker.container.image.v1+json"
TENSOR_MEDIA_TYPE = "application/vnd.ollama.image.tensor"
JSON_MEDIA_TYPE = "application/vnd.ollama.image.json"
TEXT_MEDIA_TYPE = "application/vnd.ollama.image.text"
# What a Modelfile adds to a model's weights, in ollama's own media types: a LoRA adapter (its safetensors
# file as it came), the PARAMETERs (a JSON object) and a LICENSE (text).
ADAPTER_MEDIA_TYPE = "application/vnd.ollama.image.adapter"
PARAMS_MEDIA_TYPE = "application/vnd.ollama.image.params"
LICENSE_MEDIA_TYPE = "application/vnd.ollama.image.license"
MODELFILE_MEDIA_TYPES = frozenset({ADAPTER_MEDIA_TYPE, PARAMS_MEDIA_TYPE, LICENSE_MEDIA_TYPE})


def media_type_for_file(file_name: str) -> str:
    """Media type of a non-weight file layer: JSON for `.json`, text for the rest (templates, merges)."""
    return JSON_MEDIA_TYPE if file_name.endswith(".json") else TEXT_MEDIA_TYPE


@dataclass(frozen=True)
class Layer:
    """One blob of a model. `dtype` and `shape` are set for tensor layers only."""

    name: str
    digest: str
    size: int
    media_type: str
    dtype: str | None = None
    shape: tuple[int, ...] | None = None

    @property
    def is_tensor(self) -> bool:
        return self.media_type == TENSOR_MEDIA_TYPE

    @property
    def from_modelfile(self) -> bool:
        """An adapter, params or license layer: what a Modelfile added to the weights and files."""
        return self.media_type in MODELFILE_MEDIA_TYPES

    @property
    def component(self) -> str:
        """The component folder a layer belongs to ("" for top-level files like model_index.json)."""
        head, sep, _ = self.name.partition("/")
        return head if sep else ""

    def to_json(self) -> dict:
        out = {"mediaType": self.media_type, "digest": self.digest, "size": self.size, "name": self.name}
        if self.dtype is not None:
            out["dtype"] = self.dtype
        if self.shape is not None:
            out["shape"] = list(self.shape)
        return out

    @classmethod
    def from_json(cls, obj: dict) -> "Layer":
        """A layer from its manifest entry; a KeyError, TypeError or ValueError if it is malformed
        (the digest is checked by `decode_manifest`)."""
        name, size, media_type = obj["name"], obj["size"], obj["mediaType"]
        dtype, shape = obj.get("dtype"), obj.get("shape")
        if not isinstance(name, str) or not isinstance(media_type, str):
            raise ValueError(f"a layer has name {name!r} and mediaType {media_type!r}, not strings")
        if not _is_count(size):
            raise ValueError(f"layer {name!r} has size {size!r}")
        if dtype is not None and not isinstance(dtype, str):
            raise ValueError(f"layer {name!r} has dtype {dtype!r}")
        if shape is not None and not (isinstance(shape, list) and all(_is_count(d) for d in shape)):
            raise ValueError(f"layer {name!r} has shape {shape!r}")
        return cls(
            name=name,
            digest=obj["digest"],
            size=size,
            media_type=media_type,
            dtype=dtype,
            shape=tuple(shape) if shape is not None else None,
        )


@dataclass(frozen=True)
class Manifest:
    """A model as stored: its layers, its parsed config and the config blob's descriptor.

    `digest` is the SHA-256 of the manifest file's bytes (its first 12 hex digits are the model ID that
    `list` shows); `raw` are those bytes, which `cp` copies unchanged. `name` is the name it was read
    under (several names may share one manifest).
    """

    layers: tuple[Layer, ...]
    config: ModelConfig
    config_digest: str
    config_size: int
    raw: bytes = field(repr=False)
    name: ModelName | None = None

    @property
    def digest(self) -> str:
        return "sha256:" + hashlib.sha256(self.raw).hexdigest()

    @property
    def id(self) -> str:
        return self.digest.removeprefix("sha256:")[:12]

    @property
    def total_size(self) -> int:
        """Bytes of every blob the model uses, the config blob included."""
        return self.config_size + sum(layer.size for layer in self.layers)

    def layer(self, name: str) -> Layer:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(name)

    def component_layers(self, component: str) -> list[Layer]:
        """The layers of one component folder, in checkpoint order."""
        return [layer for layer in self.layers if layer.component == component]

    def weight_layers(self) -> tuple[Layer, ...]:
        """The layers of the model as imported: its tensors and files, without what a Modelfile added."""
        return tuple(layer for layer in self.layers if not layer.from_modelfile)

    def layers_of_type(self, media_type: str) -> tuple[Layer, ...]:
        return tuple(layer for layer in self.layers if layer.media_type == media_type)

    def digests(self) -> set[str]:
        return {self.config_digest} | {layer.digest for layer in self.layers}


def encode_manifest(layers: list[Layer], config_digest: str, config_size: int) -> bytes:
    doc = {
        "schemaVersion": SCHEMA_VERSION,
        "mediaType": MANIFEST_MEDIA_TYPE,
        "config": {"mediaType": CONFIG_MEDIA_TYPE, "digest": config_digest, "size": config_size},
        "layers": [layer.to_json() for layer in layers],
    }
    return json.dumps(doc, indent=2).encode("utf-8") + b"\n"


def decode_manifest(raw: bytes, read_config: Callable[[str], bytes], name: ModelName) -> Manifest:
    """Parse manifest bytes; `read_config(digest)` returns the config blob's bytes.

    Anything `show`, `create --from` or the loader would trip over later is a UserError here: a
    manifest that is not one, a digest that is not `sha256:<64 hex>`, a config blob that is missing, not
    JSON, or not shaped as `import_folder` writes it.
    """
    where = str(name)
    try:
        doc = json.loads(raw)
        if not isinstance(doc, dict):
            raise ValueError("not a JSON object")
        if doc.get("schemaVersion") != SCHEMA_VERSION:
            raise ValueError(f"unsupported schemaVersion {doc.get('schemaVersion')!r}")
        layers = tuple(Layer.from_json(obj) for obj in doc["layers"])
        config_digest, config_size = doc["config"]["digest"], doc["config"]["size"]
        if not _is_count(config_size):
            raise ValueError(f"the config blob has size {config_size!r}")
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise UserError(f"corrupt manifest {where}: {exc}") from None
    damaged = f"model {where} is damaged"
    for digest, what in [
        (config_digest, "its config blob"),
        *((la.digest, f"layer {la.name!r}") for la in layers),
    ]:
        if not is_digest(digest):
            raise UserError(f"{damaged}: {what} has the invalid digest {digest!r}; re-create the model")
    try:
        parsed = json.loads(read_config(config_digest))
    except FileNotFoundError:
        raise UserError(f"{damaged}: its config blob {config_digest} is missing") from None
    except OSError as exc:
        raise UserError(f"{damaged}: cannot read its config blob ({exc.strerror or exc})") from None
    except ValueError as exc:
        raise UserError(f"{damaged}: its config blob is not valid JSON ({exc})") from None
    try:
        config = ModelConfig.from_json(parsed)
    except ValueError as exc:
        raise UserError(f"{damaged}: its config blob {exc}; re-create the model") from None
    return Manifest(layers, config, config_digest, config_size, raw, name)


def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def with_capabilities(manifest: Manifest, read_blob: Callable[[str], bytes]) -> Manifest:
    """The manifest with the capabilities this version's code gives the model, derived from its family and
    its stored config files (`read_blob(digest)` gives a blob's bytes), whatever the record says: the
    record is what the creating version could do, and a newer version can do more (or, fixed, less).
    Unchanged when this version does not know the family or the files do not say."""
    config = manifest.config
    architecture = ARCHITECTURES.get(config.architecture)
    if architecture is None:
        return manifest
    files = {layer.name: layer.digest for layer in manifest.layers if not layer.is_tensor}

    def read_json(relpath: str) -> dict:
        return json.loads(read_blob(files[relpath]))

    try:
        capabilities = architecture.capabilities(read_json)
    except (KeyError, OSError, TypeError, ValueError):
        return manifest
    return dataclasses.replace(manifest, config=dataclasses.replace(config, capabilities=capabilities))
