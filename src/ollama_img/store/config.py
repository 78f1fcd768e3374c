"""The config blob: a model's description as one typed record, `ModelConfig`.

`create` writes it (`import_folder`); `show`, `list`, the engine and `create --from` read it:

    {"architecture": "ZImagePipeline", "family": "z-image", "format": "diffusers",
     "components": {"transformer": {"class": "ZImageTransformer2DModel", "parameters": 6154908736,
                                    "size": 12309817472, "dtypes": ["BF16"]}, ...},
     "parameter_count": ..., "quantization": null or {"type": "fp8", "mode": "mxfp8", "bits": 8,
     "group_size": 32, "rule": "...", "tensors": {"transformer": 240, ...}},
     "image_capabilities": {"sizes": {"unit": 16, "max_width": 8192, "max_height": 8192},
                            "guidance": true, ...},
     "total_size": ...}

The capabilities' key is `image_capabilities`: ollama's own config blobs (ConfigV2, which registries
also carry) use `capabilities` for a list of words such as ["image"].

Reading is tolerant the way a store must be across versions: any field may be missing or null (blobs
of older versions lack some), keys a reader does not know are ignored, and a present field of the
wrong type is a ValueError that says which. The recorded capabilities are what the creating version
could do: the store replaces them with what this version's code derives from the family and the config
files when it reads the manifest (`with_capabilities`). Fields a later
version adds (a Modelfile's PARAMETERs, adapters) go here the same way: with a default that reads
older blobs as having none.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from ollama_img.models.interface import Capabilities

CAPABILITIES_KEY = "image_capabilities"


@dataclass(frozen=True)
class ComponentInfo:
    """One component as `show` lists it."""

    class_name: str | None = None  # from model_index.json, e.g. "ZImageTransformer2DModel"
    parameters: int | None = None
    size: int | None = None  # bytes of its blobs
    dtypes: tuple[str, ...] | None = None  # of its tensors as stored (before quantization)

    def to_json(self) -> dict:
        dtypes = None if self.dtypes is None else list(self.dtypes)
        return {"class": self.class_name, "parameters": self.parameters, "size": self.size, "dtypes": dtypes}

    @classmethod
    def from_json(cls, name: str, obj) -> ComponentInfo:
        if not isinstance(obj, dict):
            raise ValueError(f"describes component {name!r} as {obj!r}, not an object")
        class_name = obj.get("class")
        if class_name is not None and not isinstance(class_name, str):
            raise ValueError(f"has class {class_name!r} for component {name!r}, not a string")
        for key in ("parameters", "size"):
            if obj.get(key) is not None and not _is_count(obj[key]):
                raise ValueError(f"has {key} {obj[key]!r} for component {name!r}, not a count")
        dtypes = obj.get("dtypes")
        if dtypes is not None and not (isinstance(dtypes, list) and all(isinstance(d, str) for d in dtypes)):
            raise ValueError(f"has dtypes {dtypes!r} for component {name!r}, not a list of strings")
        return cls(
            class_name, obj.get("parameters"), obj.get("size"), None if dtypes is None else tuple(dtypes)
        )


@dataclass(frozen=True)
class QuantizationRecord:
    """How `create --quantize` quantized the model: the type, and which tensors (the rule, the counts)."""

    type: str
    mode: str | None = None  # MLX's quantization mode
    bits: int | None = None
    group_size: int | None = None
    rule: str | None = None  # the family's rule in words
    tensors: dict[str, int] = field(default_factory=dict)  # component -> tensors quantized

    def to_json(self) -> dict:
        return {
            "type": self.type,
            "mode": self.mode,
            "bits": self.bits,
            "group_size": self.group_size,
            "rule": self.rule,
            "tensors": dict(self.tensors),
        }

    @classmethod
    def from_json(cls, obj) -> QuantizationRecord:
        if isinstance(obj, str):  # a bare type name
            return cls(obj)
        if not isinstance(obj, dict):
            raise ValueError(f"has quantization {obj!r}, neither a string nor an object")
        counts = obj.get("tensors") or {}
        if not (isinstance(counts, dict) and all(_is_count(n) for n in counts.values())):
            raise ValueError(f"has quantized tensor counts {counts!r}, not an object of counts")
        return cls(
            type=str(obj.get("type")),
            mode=obj.get("mode"),
            bits=obj.get("bits"),
            group_size=obj.get("group_size"),
            rule=obj.get("rule"),
            tensors=dict(counts),
        )


@dataclass(frozen=True)
class ModelConfig:
    architecture: str | None = None  # model_index.json `_class_name`
    family: str | None = None
    format: str | None = None  # "diffusers"
    components: dict[str, ComponentInfo] = field(default_factory=dict)
    parameter_count: int | None = None
    quantization: QuantizationRecord | None = None  # None: stored as released
    capabilities: Capabilities | None = None  # None: unknown (an architecture this version lacks)
    total_size: int | None = None  # bytes of every layer blob

    def to_json(self) -> dict:
        return {
            "architecture": self.architecture,
            "family": self.family,
            "format": self.format,
            "components": {name: info.to_json() for name, info in self.components.items()},
            "parameter_count": self.parameter_count,
            "quantization": None if self.quantization is None else self.quantization.to_json(),
            CAPABILITIES_KEY: None if self.capabilities is None else self.capabilities.to_json(),
            "total_size": self.total_size,
        }

    def encode(self) -> bytes:
        """The blob's bytes."""
        return json.dumps(self.to_json(), indent=2).encode("utf-8") + b"\n"

    @classmethod
    def from_json(cls, obj) -> ModelConfig:
        """The record of a parsed config blob; a ValueError phrased to follow "its config blob"."""
        if not isinstance(obj, dict):
            raise ValueError(f"holds a JSON {type(obj).__name__}, not an object")
        for key in ("architecture", "family", "format"):
            if obj.get(key) is not None and not isinstance(obj[key], str):
                raise ValueError(f"has {key} {obj[key]!r}, not a string")
        for key in ("parameter_count", "total_size"):
            if obj.get(key) is not None and not _is_count(obj[key]):
                raise ValueError(f"has {key} {obj[key]!r}, not a count")
        components = obj.get("components") or {}
        if not isinstance(components, dict):
            raise ValueError(f"has components {components!r}, not an object")
        quantization = obj.get("quantization")
        capabilities = obj.get(CAPABILITIES_KEY)
        try:
            capabilities = None if capabilities is None else Capabilities.from_json(capabilities)
        except ValueError as exc:
            raise ValueError(f"has {exc}") from None
        return cls(
            architecture=obj.get("architecture"),
            family=obj.get("family"),
            format=obj.get("format"),
            components={name: ComponentInfo.from_json(name, info) for name, info in components.items()},
            parameter_count=obj.get("parameter_count"),
            quantization=QuantizationRecord.from_json(quantization) if quantization else None,
            capabilities=capabilities,
            total_size=obj.get("total_size"),
        )


def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
