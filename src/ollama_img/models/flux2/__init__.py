"""FLUX.2 [klein] (Black Forest Labs, 4B and 9B, distilled and base) in MLX: build the pipeline from any
weight source."""

from __future__ import annotations

import mlx.core as mx

from ollama_img.errors import UserError
from ollama_img.models.flux2.pipeline import Flux2KleinPipeline
from ollama_img.models.flux2.text_encoder import OUT_LAYERS, PromptEncoder, build_text_encoder
from ollama_img.models.flux2.transformer import Flux2Config, Flux2Transformer
from ollama_img.models.flux2.vae import AutoencoderKLFlux2, Flux2VaeConfig
from ollama_img.models.zimage import (
    _checkpoint_dtype,
    _config,
    _linear_dtype,
    _load_module,
    _renamed,
    _strategies,
    _tokenizer,
    compute_dtype,
)
from ollama_img.models.zimage.text_encoder import Qwen3Config
from ollama_img.quantized_linear import use_dequantizing_linears
from ollama_img.weights import WeightSource

__all__ = ["Flux2KleinPipeline", "load"]


def load(
    source: WeightSource, dtype: mx.Dtype | None = None, *, quantized: str | None = None
) -> Flux2KleinPipeline:
    """Read configs and weights from `source` and build the MLX pipeline (weights evaluated, ready to run).

    Quantized weights run as `ollama_img.quantization.loading_strategy` picks; `quantized` forces one way.
    """
    label = source.label
    tokenizer = _tokenizer(source)
    strategy, per_call = _strategies(quantized)
    distilled = bool(source.read_json("model_index.json").get("is_distilled", False))

    te = source.weights("text_encoder")
    checkpoint_dtype = _checkpoint_dtype(te)
    if dtype is None:
        dtype = compute_dtype(checkpoint_dtype)
    te_cfg = _config(Qwen3Config.from_dict, source.read_json("text_encoder/config.json"), label)
    text_encoder = _config(lambda c: build_text_encoder(c, OUT_LAYERS), te_cfg, label)
    te_quantized = _renamed(text_encoder.sanitize, te.quantized)
    _load_module(
        text_encoder,
        text_encoder.sanitize(te.tensors),
        dtype,
        f"{label} text_encoder",
        te_quantized,
        strategy,
    )
    del te
    use_dequantizing_linears(text_encoder, per_call, _linear_dtype(checkpoint_dtype, dtype))
    try:
        prompt_encoder = PromptEncoder(tokenizer, text_encoder, OUT_LAYERS)
    except ValueError as exc:
        raise UserError(f"{label}: {exc}") from None

    tr_cfg = _config(Flux2Config.from_dict, source.read_json("transformer/config.json"), label)
    if tr_cfg.joint_attention_dim != len(OUT_LAYERS) * te_cfg.hidden_size:
        raise UserError(
            f"{label}: the transformer takes {tr_cfg.joint_attention_dim} text features, but the text encoder "
            f"gives {len(OUT_LAYERS)} x {te_cfg.hidden_size}"
        )
    transformer = Flux2Transformer(tr_cfg)
    tr = source.weights("transformer")
    _load_module(transformer, tr.tensors, dtype, f"{label} transformer", tr.quantized, strategy)
    del tr
    transformer.fuse_projections()
    use_dequantizing_linears(transformer, per_call, _linear_dtype(checkpoint_dtype, dtype))
    mx.eval(transformer.parameters())

    vae_cfg = _config(Flux2VaeConfig.from_dict, source.read_json("vae/config.json"), label)
    if tr_cfg.in_channels != vae_cfg.token_features:
        raise UserError(
            f"{label}: the transformer takes {tr_cfg.in_channels} features, the VAE gives {vae_cfg.token_features}"
        )
    vae = AutoencoderKLFlux2(vae_cfg)
    _load_module(vae, vae.sanitize(source.weights("vae").tensors), dtype, f"{label} vae")

    return Flux2KleinPipeline(
        prompt_encoder=prompt_encoder,
        transformer=transformer,
        vae=vae,
        scheduler_config=source.read_json("scheduler/scheduler_config.json"),
        distilled=distilled,
        dtype=dtype,
        name=label,
        digest=source.digest,
    )
