"""Quantization types, which tensors a model quantizes, and how a quantized weight is stored.

A quantized weight stays one store layer, as in ollama: its blob is a safetensors file holding the
packed `weight`, its `scales` and, for MLX's affine mode, `biases`, with the type in `__metadata__`
(`quantization`, `mode`, `bits`, `group_size`, all strings). The manifest layer keeps the logical name,
dtype and shape; the config blob's `quantization` records the type and the rule (`config_record`).

The types are MLX's quantization modes under the names ollama's MLX engine uses. Quantizing needs MLX
(`quantize_weight`); everything else here is plain Python, so `show` and the store never import MLX.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ollama_img.errors import UserError

FLOAT_DTYPES = ("BF16", "F16", "F32")  # what can be quantized; anything else is stored as it is


@dataclass(frozen=True)
class QuantType:
    """One `--quantize` choice: an MLX quantization mode with its bits and group size."""

    name: str  # "fp8": what the user types and `show` prints
    mode: str  # MLX's mode: "affine", "mxfp8", "mxfp4", "nvfp4"
    bits: int
    group_size: int
    summary: str  # one phrase for `show` and `--help`

    def metadata(self) -> dict[str, str]:
        """The `__metadata__` of each quantized weight's blob."""
        return {
            "quantization": self.name,
            "mode": self.mode,
            "bits": str(self.bits),
            "group_size": str(self.group_size),
        }


TYPES = {
    t.name: t
    for t in (
        QuantType("fp8", "mxfp8", 8, 32, "8-bit e4m3 floats, one power-of-two scale per 32"),
        QuantType("int8", "affine", 8, 64, "8-bit integers, a scale and an offset per 64"),
        QuantType("int4", "affine", 4, 64, "4-bit integers, a scale and an offset per 64"),
        QuantType("nvfp4", "nvfp4", 4, 16, "4-bit e2m1 floats, one e4m3 scale per 16"),
        QuantType("mxfp4", "mxfp4", 4, 32, "4-bit e2m1 floats, one power-of-two scale per 32"),
    )
}
ALIASES = {"mxfp8": "fp8"}


def parse_quant_type(text: str) -> QuantType:
    """The type a user named (`fp8`, `mxfp8`, `int8`, `int4`, `nvfp4`, `mxfp4`), or a UserError listing them."""
    key = text.strip().lower()
    key = ALIASES.get(key, key)
    if key not in TYPES:
        choices = ", ".join(TYPES)
        raise UserError(f"unknown quantization type {text!r}; choose one of {choices} (mxfp8 = fp8)")
    return TYPES[key]


# ---------------------------------------------------------------------------------------------
# Which tensors: one rule per architecture, chosen from measured error (bench/RESULTS.md).


@dataclass(frozen=True)
class QuantRule:
    """The weights of a model that `--quantize` quantizes: full-match patterns per component."""

    patterns: dict[str, str]  # component -> regular expression over the tensor name in the checkpoint
    text: str  # the rule in words, recorded in the config blob and printed by `show`

    def selects(self, layer_name: str, dtype: str, shape: tuple[int, ...], quant: QuantType) -> bool:
        """Whether the tensor `component/name` is quantized: it matches, is a float matrix, and its input
        size (the last dimension, along which groups run) is a multiple of the group size."""
        component, _, tensor = layer_name.partition("/")
        pattern = self.patterns.get(component)
        return (
            pattern is not None
            and re.fullmatch(pattern, tensor) is not None
            and dtype in FLOAT_DTYPES
            and len(shape) == 2
            and shape[-1] % quant.group_size == 0
        )


ZIMAGE_RULE = QuantRule(
    patterns={
        "transformer": (
            r"(layers|noise_refiner|context_refiner)\.\d+\."
            r"(attention\.(to_q|to_k|to_v|to_out\.0)|feed_forward\.w[123])\.weight"
        ),
        "text_encoder": r"(model\.)?layers\.\d+\.(self_attn\.[qkvo]_proj|mlp\.(gate|up|down)_proj)\.weight",
    },
    text=(
        "Linear weights of the transformer's layers, noise_refiner and context_refiner blocks (attention "
        "q, k, v, out; feed-forward w1, w2, w3) and of the text encoder's decoder layers (q, k, v, o, "
        "gate, up, down), where the input size is a multiple of the group size; embedders, adaLN, "
        "final layer, pad tokens, norms and the VAE keep their dtype"
    ),
)

RULES = {"ZImagePipeline": ZIMAGE_RULE}


def rule_for(architecture: str) -> QuantRule:
    """The quantization rule of an architecture (its model_index.json `_class_name`)."""
    if architecture not in RULES:
        raise UserError(f"quantization is not supported for {architecture} models")
    return RULES[architecture]


def config_record(quant: QuantType, rule: QuantRule, counts: dict[str, int]) -> dict:
    """The config blob's `quantization`: the type, the rule, and how many tensors of each component it hit."""
    return {
        "type": quant.name,
        "mode": quant.mode,
        "bits": quant.bits,
        "group_size": quant.group_size,
        "rule": rule.text,
        "tensors": counts,
    }


def describe(record) -> tuple[str, list[tuple[str, str]]]:
    """What `show` prints for a config's `quantization`: a short value and detail rows (type, tensors, rule)."""
    if not record:
        return "none", []
    if not isinstance(record, dict):
        return str(record), []
    name = str(record.get("type"))
    known = TYPES.get(name)
    detail = f"{record.get('mode')}, {record.get('bits')} bits, groups of {record.get('group_size')}"
    rows = [("type", f"{name}: {detail}" + (f" ({known.summary})" if known else ""))]
    counts = record.get("tensors")
    if isinstance(counts, dict):
        total = sum(int(n) for n in counts.values())
        per = ", ".join(f"{component} {n}" for component, n in counts.items())
        rows.append(("tensors", f"{total} quantized ({per})" if per else "none quantized"))
    if record.get("rule"):
        rows.append(("rule", str(record["rule"])))
    return name, rows


# ---------------------------------------------------------------------------------------------
# Loading: keep weights packed (quantized matmul) or dequantize them once at load, per back end.

# (back end, mode) pairs where MLX's quantized matmul measured slower than a plain matmul with the
# dequantized weights (bench/RESULTS.md, "Quantization"): there the loader dequantizes at load, which
# costs the memory saving but not the disk saving.
_DEQUANTIZE_AT_LOAD = {
    ("cuda", "mxfp8"),
    ("cuda", "affine"),
    ("cuda", "mxfp4"),
    ("cuda", "nvfp4"),
    ("cpu", "mxfp8"),
}


def packed_matmul_is_faster(backend: str, mode: str) -> bool:
    """Whether to keep a weight of this mode packed on this back end ("metal", "cuda", "cpu")."""
    return (backend, mode) not in _DEQUANTIZE_AT_LOAD


# ---------------------------------------------------------------------------------------------
# Blobs: quantize one weight's bytes into the blob's tensors, and read the parameters back.


@dataclass(frozen=True)
class QuantParams:
    """How one stored weight is quantized, as the loader needs it."""

    mode: str
    bits: int
    group_size: int
    dtype: str  # the logical (unquantized) dtype, safetensors spelling: dequantizing gives this back

    @classmethod
    def from_metadata(cls, metadata: dict[str, str], dtype: str, where: str) -> QuantParams:
        try:
            params = cls(metadata["mode"], int(metadata["bits"]), int(metadata["group_size"]), dtype)
        except (KeyError, ValueError):
            raise UserError(
                f"{where} is stored quantized without valid quantization metadata ({metadata}); "
                "re-create the model"
            ) from None
        if params.mode not in {t.mode for t in TYPES.values()}:
            raise UserError(f"{where} uses quantization mode {params.mode!r}, which this version cannot load")
        return params


_NUMPY_OF = {"BF16": "uint16", "F16": "float16", "F32": "float32"}  # bf16 travels as its bit pattern


def quantize_weight(
    raw, dtype: str, shape: tuple[int, ...], quant: QuantType
) -> list[tuple[str, str, object]]:
    """Quantize a weight given as its raw little-endian bytes: [(name, safetensors dtype, numpy array)].

    The names are `weight` (packed, U32), `scales` and, for affine modes, `biases`, in that order.
    """
    import numpy as np

    from ollama_img.backend import require_mlx

    mx = require_mlx()
    array = mx.array(np.frombuffer(raw, dtype=_NUMPY_OF[dtype]).reshape(shape))
    if dtype == "BF16":
        array = array.view(mx.bfloat16)
    parts = mx.quantize(array, group_size=quant.group_size, bits=quant.bits, mode=quant.mode)
    mx.eval(parts)
    return [
        (name, *_to_numpy(part)) for name, part in zip(("weight", "scales", "biases"), parts, strict=False)
    ]


def _to_numpy(array) -> tuple[str, object]:
    import mlx.core as mx
    import numpy as np

    if array.dtype == mx.bfloat16:
        return "BF16", np.array(array.view(mx.uint16))
    names = {mx.uint32: "U32", mx.uint8: "U8", mx.float16: "F16", mx.float32: "F32"}
    return names[array.dtype], np.array(array)
