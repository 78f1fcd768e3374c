"""How quantized Linear weights run in MLX; which of the three ways a back end uses is
`ollama_img.quantization.loading_strategy`.

- `QUANTIZED_MATMUL`: `nn.QuantizedLinear`, MLX's quantized matmul on the packed weights.
- `DEQUANTIZE_PER_CALL`: `DequantizingLinear`, packed weights dequantized in every call and multiplied
  with a plain matmul. The quantized model's memory at about a plain matmul's speed where MLX's
  quantized matmul is slow for the mode (dequantizing costs O(weights), the matmul O(tokens x weights)).
- `DEQUANTIZE_AT_LOAD`: plain `nn.Linear` weights dequantized once while loading: a plain matmul's
  speed, the unquantized model's memory.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_unflatten

from ollama_img.errors import UserError
from ollama_img.quantization import (
    DEQUANTIZE_AT_LOAD,
    DEQUANTIZE_PER_CALL,
    QUANTIZED_MATMUL,
    STRATEGIES,
    QuantParams,
)

__all__ = [
    "DEQUANTIZE_AT_LOAD",
    "DEQUANTIZE_PER_CALL",
    "QUANTIZED_MATMUL",
    "STRATEGIES",
    "DequantizingLinear",
    "dequantize_weights",
    "use_dequantizing_linears",
    "use_quantized_linears",
]

MX_DTYPES = {"BF16": mx.bfloat16, "F16": mx.float16, "F32": mx.float32}


class DequantizingLinear(nn.QuantizedLinear):
    """A QuantizedLinear that dequantizes its weight in each call and runs a plain matmul."""

    weight_dtype: mx.Dtype = mx.bfloat16  # what the weight dequantizes to (the checkpoint's dtype)

    @classmethod
    def from_quantized(cls, layer: nn.QuantizedLinear, weight_dtype: mx.Dtype) -> DequantizingLinear:
        out_dims, packed = layer.weight.shape
        new = cls(
            packed * 32 // layer.bits,
            out_dims,
            bias="bias" in layer,
            group_size=layer.group_size,
            bits=layer.bits,
            mode=layer.mode,
        )
        new.weight, new.scales = layer.weight, layer.scales
        new.biases = layer.get("biases")
        if "bias" in layer:
            new.bias = layer.bias
        new.weight_dtype = weight_dtype
        return new

    def __call__(self, x: mx.array) -> mx.array:
        weight = mx.dequantize(
            self["weight"],
            self["scales"],
            self.get("biases"),
            group_size=self.group_size,
            bits=self.bits,
            mode=self.mode,
            dtype=self.weight_dtype,
        )
        y = x @ weight.T
        return y + self["bias"] if "bias" in self else y


def use_quantized_linears(module: nn.Module, quantized: dict[str, QuantParams], label: str) -> None:
    """Before loading: swap each Linear whose weight is stored quantized for a QuantizedLinear of its shape."""
    linears = {path: m for path, m in module.named_modules() if isinstance(m, nn.Linear)}
    swaps = []
    for path, params in quantized.items():
        linear = linears.get(path)
        if linear is None:
            raise UserError(f"{label}: {path} is stored quantized but is not a Linear layer of this model")
        out_dims, in_dims = linear.weight.shape
        layer = nn.QuantizedLinear(
            in_dims,
            out_dims,
            bias="bias" in linear,
            group_size=params.group_size,
            bits=params.bits,
            mode=params.mode,
        )
        swaps.append((path, layer))
    module.update_modules(tree_unflatten(swaps))


def dequantize_weights(
    weights: dict[str, mx.array], quantized: dict[str, QuantParams]
) -> dict[str, mx.array]:
    """The weights with each quantized one turned back into a plain matrix of its logical dtype."""
    weights = dict(weights)
    for base, params in quantized.items():
        weights[f"{base}.weight"] = mx.dequantize(
            weights.pop(f"{base}.weight"),
            weights.pop(f"{base}.scales"),
            weights.pop(f"{base}.biases", None),
            group_size=params.group_size,
            bits=params.bits,
            mode=params.mode,
            dtype=MX_DTYPES[params.dtype],
        )
    return weights


def use_dequantizing_linears(module: nn.Module, modes: set[str], weight_dtype: mx.Dtype) -> int:
    """After loading (and fusing): turn the QuantizedLinear layers of `modes` into DequantizingLinear ones."""
    swaps = [
        (path, DequantizingLinear.from_quantized(m, weight_dtype))
        for path, m in module.named_modules()
        if type(m) is nn.QuantizedLinear and m.mode in modes
    ]
    if swaps:
        module.update_modules(tree_unflatten(swaps))
    return len(swaps)
