"""Generating from quantized models: every type loads and generates, close to the unquantized image, with the
layers each back end should use (packed quantized matmul, or dequantized at load)."""

import math

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest

from ollama_img import load_pipeline
from ollama_img.models.loading import DEQUANTIZE_PER_CALL, QUANTIZED_MATMUL, DequantizingLinear
from ollama_img.models.zimage.loader import load
from ollama_img.quantization import STRATEGIES, TYPES, loading_strategy
from ollama_img.store import Store, import_folder, inspect_folder
from ollama_img.weights import StoreSource

SIZE = {"width": 64, "height": 64, "steps": 4, "seed": 1}
PROMPT = "a lighthouse on a cliff at dusk"

# PSNR of each type's image against the bf16 model's on this tiny model (64x64, 4 steps), measured over
# three prompts and seeds (bench/RESULTS.md, "Quantization, CPU", has one of them): fp8 42.7-44.1 dB,
# int8 50.8-52.1, int4 and nvfp4 32.5-33.5, mxfp4 30.1-31.4. Each floor sits 3-6 dB under its type's
# lowest, and the fp8 floor (38 dB, an RMS error of 3.2 of 255 levels) still fails anything as coarse
# as a 4-bit type, let alone a wrong scale, a transposed weight or a mixed-up mode (under 15 dB: noise).
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
    differ only by accumulation order and rounding (measured 54 dB apart or closer)."""
    source = StoreSource(quantized_store, name)
    images, layers = [], []
    for strategy in STRATEGIES:
        pipe = load(source, quantized=strategy)
        layers.append(type(pipe.transformer.layers[0].feed_forward.w13))
        images.append(pipe.generate(PROMPT, **SIZE))
    assert layers == [nn.QuantizedLinear, DequantizingLinear, nn.Linear]
    assert min(psnr(images[0], other) for other in images[1:]) > 42


def test_a_float32_checkpoint_quantizes_and_generates(tmp_path, tiny_folder_f32):
    """Affine scales and offsets keep the checkpoint's dtype (float32 here); dequantizing gives float32."""
    store = Store(tmp_path / "store")
    import_folder(store, "f32", inspect_folder(tiny_folder_f32))
    import_folder(store, "f32-int8", inspect_folder(tiny_folder_f32), quantize=TYPES["int8"])
    to_qkv = load_pipeline("f32-int8", store=store).transformer.layers[0].attention.to_qkv
    assert to_qkv.scales.dtype == mx.float32 and to_qkv.weight_dtype == mx.float32
    reference = load_pipeline("f32", store=store).generate(PROMPT, **SIZE)
    image = load_pipeline("f32-int8", store=store).generate(PROMPT, **SIZE)
    assert 45 <= psnr(image, reference) < math.inf
