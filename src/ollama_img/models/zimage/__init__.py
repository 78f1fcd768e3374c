"""Z-Image (Tongyi-MAI) in MLX: build the pipeline from any weight source."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from ollama_img.backend import platform_backend
from ollama_img.errors import UserError
from ollama_img.models.zimage.pipeline import ZImagePipeline
from ollama_img.models.zimage.text_encoder import Qwen3Config, Qwen3TextEncoder
from ollama_img.models.zimage.tokenizer import PromptTokenizer
from ollama_img.models.zimage.transformer import ZImageConfig, ZImageTransformer
from ollama_img.models.zimage.vae import AutoencoderKL, VaeConfig
from ollama_img.quantization import MODES, QuantParams, loading_strategy
from ollama_img.quantized_linear import (
    DEQUANTIZE_AT_LOAD,
    DEQUANTIZE_PER_CALL,
    STRATEGIES,
    dequantize_weights,
    use_dequantizing_linears,
    use_quantized_linears,
)
from ollama_img.weights import ComponentWeights, WeightSource

__all__ = ["ZImagePipeline", "compute_dtype", "load"]


def compute_dtype(checkpoint_dtype: mx.Dtype) -> mx.Dtype:
    """The checkpoint's dtype on a GPU; float32 on the CPU.

    MLX's CPU back end has no fast half-precision matmul (bf16 runs no faster than float32 there) and
    bf16 arithmetic would only lose accuracy, so the CPU computes in float32. Linear weights keep the
    checkpoint's dtype even then: bf16 -> float32 is exact, MLX promotes them per product, and the
    model needs half the memory.
    """
    return checkpoint_dtype if mx.default_device() == mx.gpu else mx.float32


def _load_module(
    module: nn.Module,
    weights: dict[str, mx.array],
    dtype: mx.Dtype,
    label: str,
    quantized: dict[str, QuantParams] | None = None,
    strategy=None,
) -> None:
    """Load weights strictly; cast all but Linear weights (and quantized ones) to the compute dtype.

    Linear layers whose weights arrive quantized become `nn.QuantizedLinear`, or get their weights
    dequantized here where `strategy(mode)` says DEQUANTIZE_AT_LOAD.
    """
    if quantized:
        at_load = {base: p for base, p in quantized.items() if strategy(p.mode) == DEQUANTIZE_AT_LOAD}
        weights = dequantize_weights(weights, at_load) if at_load else weights
        use_quantized_linears(module, {b: p for b, p in quantized.items() if b not in at_load}, label)
    keep_dtype = {f"{path}.weight" for path, m in module.named_modules() if isinstance(m, nn.Linear)}
    for path, m in module.named_modules():
        if isinstance(m, nn.QuantizedLinear):
            keep_dtype.update(f"{path}.{key}" for key in ("weight", "scales", "biases"))
    cast = {}
    for name, value in weights.items():
        floating = mx.issubdtype(value.dtype, mx.floating)
        keep = not floating or (name in keep_dtype and mx.finfo(value.dtype).bits <= mx.finfo(dtype).bits)
        cast[name] = value if keep or value.dtype == dtype else value.astype(dtype)
    try:
        module.load_weights(list(cast.items()), strict=True)
    except ValueError as exc:
        raise UserError(f"{label}: weights do not match the model's configuration ({exc})") from None
    mx.eval(module.parameters())


def _renamed(sanitize, quantized: dict[str, QuantParams]) -> dict[str, QuantParams]:
    """Apply a module's checkpoint-name mapping (`sanitize`) to the base names of its quantized weights."""
    renamed = sanitize({f"{base}.weight": params for base, params in quantized.items()})
    return {name.removesuffix(".weight"): params for name, params in renamed.items()}


def _linear_dtype(checkpoint: mx.Dtype, compute: mx.Dtype) -> mx.Dtype:
    """What plain Linear weights hold after loading (see `_load_module`): the checkpoint's dtype unless the
    compute dtype is narrower."""
    return checkpoint if mx.finfo(checkpoint).bits <= mx.finfo(compute).bits else compute


def _checkpoint_dtype(weights: ComponentWeights) -> mx.Dtype:
    """The dtype of the checkpoint's floating-point tensors (packed quantized weights are integers)."""
    for name, value in weights.tensors.items():
        if mx.issubdtype(value.dtype, mx.floating) and not name.endswith((".scales", ".biases")):
            return value.dtype
    return mx.bfloat16


def _config(build, cfg: dict, label: str):
    try:
        return build(cfg)
    except (KeyError, TypeError, ValueError) as exc:
        raise UserError(f"{label}: unsupported or invalid configuration ({exc})") from None


def _tokenizer(source: WeightSource) -> PromptTokenizer:
    """The chat-template tokenizer of the source's `tokenizer/` folder."""
    tok_cfg = source.read_json("tokenizer/tokenizer_config.json")
    tokenizer_json = source.read_text("tokenizer/tokenizer.json")
    if tokenizer_json is None:
        raise UserError(f"{source.label}: tokenizer/tokenizer.json is missing")
    try:
        return PromptTokenizer(tokenizer_json, tok_cfg, source.read_text("tokenizer/chat_template.jinja"))
    except Exception as exc:
        raise UserError(f"{source.label}: cannot load the tokenizer ({exc})") from None


def _strategies(quantized: str | None):
    """How each quantization mode runs here (`strategy(mode)`), and the modes dequantized per call;
    `quantized` (one of `STRATEGIES`) forces one way for all of them."""
    if quantized is not None and quantized not in STRATEGIES:
        raise ValueError(f"quantized must be one of {STRATEGIES}, got {quantized!r}")
    backend = platform_backend()

    def strategy(mode: str) -> str:
        return quantized or loading_strategy(backend, mode)

    return strategy, {mode for mode in MODES if strategy(mode) == DEQUANTIZE_PER_CALL}


def load(
    source: WeightSource, dtype: mx.Dtype | None = None, *, quantized: str | None = None
) -> ZImagePipeline:
    """Read configs and weights from `source` and build the MLX pipeline (weights evaluated, ready to run).

    Quantized weights run the way `loading_strategy` picks for this back end and their mode;
    `quantized` (one of `STRATEGIES`) forces one way for all of them (benchmarks, tests).
    """
    tokenizer = _tokenizer(source)
    strategy, per_call = _strategies(quantized)

    te = source.weights("text_encoder")
    checkpoint_dtype = _checkpoint_dtype(te)
    if dtype is None:
        dtype = compute_dtype(checkpoint_dtype)
    te_cfg = _config(Qwen3Config.from_dict, source.read_json("text_encoder/config.json"), source.label)
    text_encoder = Qwen3TextEncoder(te_cfg)
    te_quantized = _renamed(text_encoder.sanitize, te.quantized)
    te_label = f"{source.label} text_encoder"
    _load_module(text_encoder, text_encoder.sanitize(te.tensors), dtype, te_label, te_quantized, strategy)
    del te
    use_dequantizing_linears(text_encoder, per_call, _linear_dtype(checkpoint_dtype, dtype))

    tr_cfg = _config(ZImageConfig.from_dict, source.read_json("transformer/config.json"), source.label)
    transformer = ZImageTransformer(tr_cfg)
    tr = source.weights("transformer")
    _load_module(transformer, tr.tensors, dtype, f"{source.label} transformer", tr.quantized, strategy)
    del tr
    transformer.fuse_projections()
    use_dequantizing_linears(transformer, per_call, _linear_dtype(checkpoint_dtype, dtype))
    mx.eval(transformer.parameters())

    vae_cfg = _config(VaeConfig.from_dict, source.read_json("vae/config.json"), source.label)
    vae = AutoencoderKL(vae_cfg)
    _load_module(vae, vae.sanitize(source.weights("vae").tensors), dtype, f"{source.label} vae")

    return ZImagePipeline(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        transformer=transformer,
        vae=vae,
        scheduler_config=source.read_json("scheduler/scheduler_config.json"),
        dtype=dtype,
        name=source.label,
        digest=source.digest,
    )
