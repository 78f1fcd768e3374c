"""The config blob: a model's description as one typed record, `ModelConfig`.

`create` writes it (`import_folder`); `show`, `list`, the engine and `create --from` read it:

    {"architecture": "ZImagePipeline", "family": "z-image", "format": "diffusers",
     "components": {"transformer": {"class": "ZImageTransformer2DModel", "parameters": 6154908736,
                                    "size": 12309817472, "dtypes": ["BF16"]}, ...},
     "parameter_count": ..., "quantization": null or {"type": "fp8", "mode": "mxfp8", "bits": 8,
     "group_size": 32, "rule": "...", "tensors": {"transformer": 240, ...}},
     "image_capabilities": {"sizes": {"unit": 16, "max_width": 8192, "max_height": 8192},
                            "guidance": true, ...},
     "total_size": ...,
     # only in a model made by a Modelfile (`create -f Modelfile`), each left out when empty:
     "base": "z-image:latest",
     "params": {"steps": 4, "negative_prompt": "blurry"},
     "adapters": [{"digest": "sha256:...", "scale": 0.8, "name": "style.safetensors"}]}

`base` is the store model it was made from (FROM), `params` its PARAMETERs (each an option of the
options table, `ollama_img.options`, as the API names it), `adapters` its LoRA adapters in the order
they apply, each the digest of its adapter layer (the file as it came), its scale and its file name.

The capabilities' key is `image_capabilities`: ollama's own config blobs (ConfigV2, which registries
also carry) use `capabilities` for a list of words such as ["image"].

Reading is tolerant the way a store must be across versions: any field may be missing or null (blobs
of older versions lack some), keys a reader does not know are ignored, and a present field of the
wrong type is a ValueError that says which. The recorded capabilities are what the creating version
could do: the store replaces them with what this version's code derives from the family and the config
files when it reads the manifest (`with_capabilities`). The Modelfile's fields were added the way any
later field is: a blob without them reads as having none, and a model without them writes none, so
its config blob is the one an older version wrote.
"""

from __future__ import annotations

import dataclasses
import json
import math
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
class AdapterRecord:
    """One LoRA adapter of a model: its layer's digest, the scale it applies with, its file's name."""

    digest: str
    scale: float = 1.0
    name: str | None = None

    def to_json(self) -> dict:
        return {"digest": self.digest, "scale": self.scale, "name": self.name}

    @classmethod
    def from_json(cls, obj) -> AdapterRecord:
        from ollama_img.store.blobs import is_digest

        if not isinstance(obj, dict) or not is_digest(obj.get("digest")):
            raise ValueError(f"has adapter {obj!r}, not an object with a sha256 digest")
        scale, name = obj.get("scale", 1.0), obj.get("name")
        if isinstance(scale, bool) or not isinstance(scale, int | float) or not math.isfinite(scale):
            raise ValueError(f"has adapter scale {scale!r}, not a finite number")
        if name is not None and not isinstance(name, str):
            raise ValueError(f"has adapter name {name!r}, not a string")
        return cls(obj["digest"], float(scale), name)


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
    base: str | None = None  # the store model a Modelfile made it FROM
    params: dict[str, object] = field(default_factory=dict)  # its PARAMETERs: option field -> value
    adapters: tuple[AdapterRecord, ...] = ()  # its LoRA adapters, in order

    def to_json(self) -> dict:
        out = {
            "architecture": self.architecture,
            "family": self.family,
            "format": self.format,
            "components": {name: info.to_json() for name, info in self.components.items()},
            "parameter_count": self.parameter_count,
            "quantization": None if self.quantization is None else self.quantization.to_json(),
            CAPABILITIES_KEY: None if self.capabilities is None else self.capabilities.to_json(),
            "total_size": self.total_size,
        }
        if self.base is not None:
            out["base"] = self.base
        if self.params:
            out["params"] = dict(self.params)
        if self.adapters:
            out["adapters"] = [adapter.to_json() for adapter in self.adapters]
        return out

    def weights_only(self) -> ModelConfig:
        """The record of the weights as imported, without what a Modelfile added (and without the total
        size, which counts those layers too)."""
        return dataclasses.replace(self, total_size=None, base=None, params={}, adapters=())

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
        if obj.get("base") is not None and not isinstance(obj["base"], str):
            raise ValueError(f"has base {obj['base']!r}, not a string")
        params = obj.get("params") or {}
        if not isinstance(params, dict) or not all(
            isinstance(v, str | int | float) and not isinstance(v, bool) for v in params.values()
        ):
            raise ValueError(f"has params {params!r}, not an object of numbers and strings")
        adapters = obj.get("adapters") or []
        if not isinstance(adapters, list):
            raise ValueError(f"has adapters {adapters!r}, not a list")
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
            base=obj.get("base"),
            params=dict(params),
            adapters=tuple(AdapterRecord.from_json(a) for a in adapters),
        )


def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
