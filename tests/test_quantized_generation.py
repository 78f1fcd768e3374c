"""Generating from quantized models: every type loads and generates, close to the unquantized image, with the
layers each back end should use (packed quantized matmul, or dequantized at load)."""

import math

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest

from ollama_img import load_pipeline
from ollama_img.models.zimage import load
from ollama_img.quantization import STRATEGIES, TYPES, loading_strategy
from ollama_img.quantized_linear import DEQUANTIZE_PER_CALL, QUANTIZED_MATMUL, DequantizingLinear
from ollama_img.store import Store, import_folder, inspect_folder
from ollama_img.weights import StoreSource

SIZE = {"width": 64, "height": 64, "steps": 4, "seed": 1}
PROMPT = "a lighthouse on a cliff at dusk"

# PSNR of each type's image against the bf16 model's, measured on this tiny model (64x64, 4 steps,
# bench/RESULTS.md "Quantization, CPU"): fp8 43.7 dB, int8 52 dB, int4 / nvfp4 / mxfp4 32-33 dB.
# The floors sit ~5 dB under those, which is what a different seed or prompt moves them by, and far
# above what a wrong scale, a transposed weight or a mixed-up mode gives (under 15 dB: noise).
PSNR_FLOOR = {"fp8": 38.0, "int8": 45.0, "int4": 27.0, "nvfp4": 27.0, "mxfp4": 27.0}


def psnr(a, b) -> float:
    mse = np.mean((np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)) ** 2)
    return math.inf if mse == 0 else 10 * math.log10(255**2 / mse)


@pytest.fixture(scope="module")
def quantized_store(tmp_path_factory, tiny_folder):
    """A store holding the tiny model unquantized ("bf16") and once per type."""
    store = Store(tmp_path_factory.mktemp("quantized-store"))
    import_folder(store, "bf16", inspect_folder(tiny_folder))
    for name, quant in TYPES.items():
        import_folder(store, name, inspect_folder(tiny_folder), quantize=quant)
    return store


@pytest.fixture(scope="module")
def bf16(quantized_store):
    pipe = load_pipeline("bf16", store=quantized_store)
    return pipe, np.asarray(pipe.generate(PROMPT, **SIZE))


@pytest.mark.parametrize("name", list(TYPES))
def test_every_type_generates_close_to_the_unquantized_model(quantized_store, bf16, name):
    reference_pipe, reference = bf16
    pipe = load_pipeline(name, store=quantized_store)
    image = np.asarray(pipe.generate(PROMPT, **SIZE))
    assert image.shape == reference.shape and image.std() > 5
    assert PSNR_FLOOR[name] <= psnr(image, reference) < math.inf  # close, and really quantized

    # The CPU's choice, measured: dequantize per call where MLX's quantized matmul is slower than a plain
    # one (mxfp8, affine), quantized matmul for the fp4 modes. Either way the weights stay packed, so
    # the pipeline holds less than the bf16 one (what `ps` shows), and q/k/v fuse into one layer.
    layer_type = {QUANTIZED_MATMUL: nn.QuantizedLinear, DEQUANTIZE_PER_CALL: DequantizingLinear}[
        loading_strategy("cpu", TYPES[name].mode)
    ]
    assert layer_type is (DequantizingLinear if name in ("fp8", "int8", "int4") else nn.QuantizedLinear)
    attention = pipe.transformer.layers[0].attention
    assert type(attention.to_qkv) is layer_type
    assert (attention.to_qkv.mode, attention.to_qkv.bits) == (TYPES[name].mode, TYPES[name].bits)
    assert attention.to_qkv.weight.shape[0] == 3 * 64 and attention.to_qkv.weight.dtype == mx.uint32
    assert type(pipe.text_encoder.layers[0].self_attn.o_proj) is layer_type
    assert type(pipe.transformer.layers[0].feed_forward.w2) is nn.Linear  # input 170: not quantized
    assert pipe.resident_bytes < reference_pipe.resident_bytes


@pytest.mark.parametrize("name", list(TYPES))
def test_every_way_to_run_the_weights_computes_the_same_model(quantized_store, name):
    """Quantized matmul, dequantizing per call and dequantizing at load use the same weights: the images
    differ only by accumulation order and rounding (measured 47-65 dB apart)."""
    source = StoreSource(quantized_store, name)
    images, layers = [], []
    for strategy in STRATEGIES:
        pipe = load(source, quantized=strategy)
        layers.append(type(pipe.transformer.layers[0].feed_forward.w13))
        images.append(pipe.generate(PROMPT, **SIZE))
    assert layers == [nn.QuantizedLinear, DequantizingLinear, nn.Linear]
    assert min(psnr(images[0], other) for other in images[1:]) > 42
