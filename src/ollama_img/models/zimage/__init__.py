"""Z-Image (Tongyi-MAI) in MLX: build the pipeline from any weight source."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from ollama_img.errors import UserError
from ollama_img.models.zimage.pipeline import ZImagePipeline
from ollama_img.models.zimage.text_encoder import Qwen3Config, Qwen3TextEncoder
from ollama_img.models.zimage.tokenizer import PromptTokenizer
from ollama_img.models.zimage.transformer import ZImageConfig, ZImageTransformer
from ollama_img.models.zimage.vae import AutoencoderKL, VaeConfig
from ollama_img.weights import WeightSource

__all__ = ["ZImagePipeline", "compute_dtype", "load"]


def compute_dtype(checkpoint_dtype: mx.Dtype) -> mx.Dtype:
    """The checkpoint's dtype on a GPU; float32 on the CPU.

    MLX's CPU back end has no fast half-precision matmul (bf16 runs no faster than float32 there) and
    bf16 arithmetic would only lose accuracy, so the CPU computes in float32. Linear weights keep the
    checkpoint's dtype even then: bf16 -> float32 is exact, MLX promotes them per product, and the
    model needs half the memory.
    """
    return checkpoint_dtype if mx.default_device() == mx.gpu else mx.float32


def _load_module(module: nn.Module, weights: dict[str, mx.array], dtype: mx.Dtype, label: str) -> None:
    """Load weights strictly; cast all but Linear weights to the compute dtype."""
    linear_weights = {f"{path}.weight" for path, m in module.named_modules() if isinstance(m, nn.Linear)}
    cast = {}
    for name, value in weights.items():
        keep = name in linear_weights and mx.finfo(value.dtype).bits <= mx.finfo(dtype).bits
        cast[name] = value if keep or value.dtype == dtype else value.astype(dtype)
    try:
        module.load_weights(list(cast.items()), strict=True)
    except ValueError as exc:
        raise UserError(f"{label}: weights do not match the model's configuration ({exc})") from None
    mx.eval(module.parameters())


def _config(build, cfg: dict, label: str):
    try:
        return build(cfg)
    except (KeyError, TypeError, ValueError) as exc:
        raise UserError(f"{label}: unsupported or invalid configuration ({exc})") from None


def load(source: WeightSource, dtype: mx.Dtype | None = None) -> ZImagePipeline:
    """Read configs and weights from `source` and build the MLX pipeline (weights evaluated, ready to run)."""
    tok_cfg = source.read_json("tokenizer/tokenizer_config.json")
    tokenizer_json = source.read_text("tokenizer/tokenizer.json")
    if tokenizer_json is None:
        raise UserError(f"{source.label}: tokenizer/tokenizer.json is missing")
    try:
        tokenizer = PromptTokenizer(
            tokenizer_json, tok_cfg, source.read_text("tokenizer/chat_template.jinja")
        )
    except Exception as exc:
        raise UserError(f"{source.label}: cannot load the tokenizer ({exc})") from None

    te_weights = source.tensors("text_encoder")
    if dtype is None:
        dtype = compute_dtype(next(iter(te_weights.values())).dtype)
    te_cfg = _config(Qwen3Config.from_dict, source.read_json("text_encoder/config.json"), source.label)
    text_encoder = Qwen3TextEncoder(te_cfg)
    _load_module(text_encoder, text_encoder.sanitize(te_weights), dtype, f"{source.label} text_encoder")
    del te_weights

    tr_cfg = _config(ZImageConfig.from_dict, source.read_json("transformer/config.json"), source.label)
    transformer = ZImageTransformer(tr_cfg)
    _load_module(transformer, source.tensors("transformer"), dtype, f"{source.label} transformer")
    transformer.fuse_projections()
    mx.eval(transformer.parameters())

    vae_cfg = _config(VaeConfig.from_dict, source.read_json("vae/config.json"), source.label)
    vae = AutoencoderKL(vae_cfg)
    _load_module(vae, vae.sanitize(source.tensors("vae")), dtype, f"{source.label} vae")

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
