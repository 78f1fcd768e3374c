"""Quantization types, which tensors a model quantizes, and how a quantized weight is stored.

A quantized weight stays one store layer, as in ollama: its blob is a safetensors file holding the
packed `weight`, its `scales` and, for MLX's affine mode, `biases`, with the type in `__metadata__`
(`quantization`, `mode`, `bits`, `group_size`, all strings). The manifest layer keeps the logical name,
dtype and shape; the config blob's `quantization` records the type and the rule
(`ollama_img.store.config.QuantizationRecord`).

The types are MLX's quantization modes under the names ollama's MLX engine uses. Quantizing needs MLX
(`quantize_weight`); everything else here is plain Python, so `show` and the store never import MLX.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
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
    summary: str  # one phrase for `show`

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
MODES = frozenset(t.mode for t in TYPES.values())


def parse_quant_type(text: str) -> QuantType:
    """The type a user named (`fp8`, `mxfp8`, `int8`, `int4`, `nvfp4`, `mxfp4`), or a UserError listing them."""
    key = text.strip().lower()
    key = ALIASES.get(key, key)
    if key not in TYPES:
        choices = ", ".join(TYPES)
        raise UserError(f"unknown quantization type {text!r}; choose one of {choices} (mxfp8 = fp8)")
    return TYPES[key]


# ---------------------------------------------------------------------------------------------
# Which tensors: each family declares its rule (`Architecture.quantization`, from measured error);
# what any rule requires of a tensor is here.


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


# ---------------------------------------------------------------------------------------------
# Loading: how each back end runs quantized weights (see `ollama_img.models.loading`).

QUANTIZED_MATMUL = "quantized-matmul"  # packed, MLX's quantized matmul
DEQUANTIZE_PER_CALL = "dequantize-per-call"  # packed, dequantized in each call for a plain matmul
DEQUANTIZE_AT_LOAD = "dequantize-at-load"  # plain weights, dequantized once while loading
STRATEGIES = (QUANTIZED_MATMUL, DEQUANTIZE_PER_CALL, DEQUANTIZE_AT_LOAD)

# Chosen from measurements (bench/RESULTS.md, "Quantization"): the fastest way that keeps the weights
# packed. Dequantizing at load (a plain matmul's speed, the unquantized model's memory) is never chosen:
# a quantized model is asked for to fit a smaller memory; it stays available to force (benchmarks).
# - CPU: quantized matmul is ~2x slower than a plain one for mxfp8 and ~10% slower for affine, ~2x
#   faster for the fp4 modes; dequantizing per call is within 5% of a plain matmul.
# - CUDA: mxfp8 quantized matmul measured 4.5x slower than bf16 at the FFN shape on an H100 (4224 tokens);
#   dequantizing per call cost 1.16 s against 0.96 s at load for a 1024x1024 fp8 image, 1.10 against
#   1.01 s for int4. The text encoder dequantizes per call too, though its few hundred tokens would suit
#   the quantized matmul: MLX compiles that kernel with NVRTC for each tile shape it picks, 45-51 s each
#   on an H200, on the first prompt and again on some new prompt lengths, where the dequantization is
#   precompiled in MLX's library (bench/RESULTS.md, "What a first image compiles"). Dequantizing the
#   36 layers of a 4B encoder costs milliseconds per prompt.
# - Metal (not in the table): MLX's quantized kernels are its fast path there.
_STRATEGY = {
    ("cpu", "mxfp8"): DEQUANTIZE_PER_CALL,
    ("cpu", "affine"): DEQUANTIZE_PER_CALL,
    ("cuda", "mxfp8"): DEQUANTIZE_PER_CALL,
    ("cuda", "affine"): DEQUANTIZE_PER_CALL,
    ("cuda", "nvfp4"): DEQUANTIZE_PER_CALL,
    ("cuda", "mxfp4"): DEQUANTIZE_PER_CALL,
}


def loading_strategy(backend: str, mode: str) -> str:
    """How to run weights of quantization `mode` on `backend` ("metal", "cuda", "cpu")."""
    return _STRATEGY.get((backend, mode), QUANTIZED_MATMUL)


def quantized_nbytes(shape: tuple[int, ...], quant: QuantType) -> int:
    """Bytes of a (rows, cols) weight quantized as `quant` (packed values, scales and, for affine modes,
    bf16 offsets; the blob's ~150-byte header aside): 0.52x bf16 for fp8, 0.28x for int4."""
    rows, cols = shape
    groups = rows * (cols // quant.group_size)
    per_group = 4 if quant.mode == "affine" else 1  # bf16 scale + bf16 offset; one 8-bit scale
    return rows * cols * quant.bits // 8 + groups * per_group


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
        if params.mode not in MODES:
            raise UserError(f"{where} uses quantization mode {params.mode!r}, which this version cannot load")
        return params


_NUMPY_OF = {"BF16": "uint16", "F16": "float16", "F32": "float32"}  # bf16 travels as its bit pattern
BLOCK_BYTES = 8 << 20  # source bytes quantized at a time


def quantize_weight(
    chunks: Iterable, dtype: str, shape: tuple[int, ...], quant: QuantType, block_bytes: int = BLOCK_BYTES
) -> list[tuple[str, str, list]]:
    """Quantize a (rows, cols) weight streamed as raw little-endian byte chunks.

    Returns [(name, safetensors dtype, [numpy blocks])] for `weight` (packed, U32), `scales` and, for
    affine modes, `biases`; each tensor is its blocks concatenated along the rows. Groups run along a
    row, so quantizing a block of rows at a time gives the same bytes as the whole matrix at once,
    while memory holds one block of the source and the (2 to 4 times smaller) quantized output.
    """
    import numpy as np

    from ollama_img.backend import require_mlx
    from ollama_img.store.safetensors_format import DTYPE_SIZES  # here: the store imports this module

    mx = require_mlx()
    rows, cols = shape
    row_bytes = cols * DTYPE_SIZES[dtype]
    names = ("weight", "scales", "biases")
    outputs: list[tuple[str, str, list]] = []

    def quantize_rows(data) -> None:
        block = mx.array(np.frombuffer(data, dtype=_NUMPY_OF[dtype]).reshape(-1, cols))
        if dtype == "BF16":
            block = block.view(mx.bfloat16)
        kwargs = {"group_size": quant.group_size, "bits": quant.bits, "mode": quant.mode}
        try:
            parts = mx.quantize(block, **kwargs)
            mx.eval(parts)
        except (RuntimeError, ValueError):  # a GPU back end without this mode's quantizer: the CPU has all
            parts = mx.quantize(block, **kwargs, stream=mx.cpu)
        for i, part in enumerate(parts):
            if part.dtype == mx.bfloat16:
                part = part.view(mx.uint16)
            if len(outputs) <= i:
                outputs.append((names[i], _SAFETENSORS_DTYPE[str(parts[i].dtype)], []))
            outputs[i][2].append(np.array(part))

    pending = bytearray()
    done = 0
    for chunk in chunks:
        pending += chunk
        if len(pending) >= block_bytes:
            whole = len(pending) - len(pending) % row_bytes
            quantize_rows(pending[:whole])
            done += whole // row_bytes
            del pending[:whole]
    if pending:
        quantize_rows(pending)
        done += len(pending) // row_bytes
    if done != rows or len(pending) % row_bytes:
        raise ValueError(f"expected {rows} rows of {row_bytes} bytes")
    return outputs


_SAFETENSORS_DTYPE = {
    "mlx.core.uint32": "U32",
    "mlx.core.uint8": "U8",
    "mlx.core.bfloat16": "BF16",
    "mlx.core.float16": "F16",
    "mlx.core.float32": "F32",
}
