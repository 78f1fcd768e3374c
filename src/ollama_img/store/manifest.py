"""Manifests: which blobs make a model, as docker v2 / ollama manifests spell it.

    {"schemaVersion": 2,
     "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
     "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "digest": ..., "size": ...},
     "layers": [{"mediaType": "application/vnd.ollama.image.tensor", "digest": "sha256:...", "size": ...,
                 "name": "transformer/layers.0.attention.to_q.weight", "dtype": "BF16", "shape": [3840, 3840]},
                {"mediaType": "application/vnd.ollama.image.json", "digest": ..., "size": ...,
                 "name": "transformer/config.json"}, ...]}

A layer's name is `<component>/<tensor name as in the checkpoint>` or the file's path in the model
folder. The config blob (JSON) describes the model: architecture, family, format, components (class,
parameters, size, dtypes), parameter_count, quantization, total_size.
"""

import hashlib
import json
from dataclasses import dataclass, field

from ollama_img.errors import UserError
from ollama_img.names import ModelName

SCHEMA_VERSION = 2
MANIFEST_MEDIA_TYPE = "application/vnd.docker.distribution.manifest.v2+json"
CONFIG_MEDIA_TYPE = "application/vnd.docker.container.image.v1+json"
TENSOR_MEDIA_TYPE = "application/vnd.ollama.image.tensor"
JSON_MEDIA_TYPE = "application/vnd.ollama.image.json"
TEXT_MEDIA_TYPE = "application/vnd.ollama.image.text"


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
        shape = obj.get("shape")
        return cls(
            name=obj["name"],
            digest=obj["digest"],
            size=int(obj["size"]),
            media_type=obj["mediaType"],
            dtype=obj.get("dtype"),
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
    config: dict
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


def decode_manifest(raw: bytes, read_config, name: ModelName) -> Manifest:
    """Parse manifest bytes; `read_config(digest)` returns the config blob's bytes."""
    where = str(name)
    try:
        doc = json.loads(raw)
        if doc.get("schemaVersion") != SCHEMA_VERSION:
            raise ValueError(f"unsupported schemaVersion {doc.get('schemaVersion')!r}")
        layers = tuple(Layer.from_json(obj) for obj in doc["layers"])
        config_digest, config_size = doc["config"]["digest"], int(doc["config"]["size"])
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise UserError(f"corrupt manifest {where}: {exc}") from None
    try:
        config = json.loads(read_config(config_digest))
    except FileNotFoundError:
        raise UserError(f"model {where} is damaged: its config blob {config_digest} is missing") from None
    except ValueError as exc:
        raise UserError(f"model {where} is damaged: its config blob is not valid JSON ({exc})") from None
    return Manifest(layers, config, config_digest, config_size, raw, name)
