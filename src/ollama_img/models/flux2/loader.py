"""Build the FLUX.2 [klein] pipeline from any weight source (a model folder or the store)."""

from __future__ import annotations

import mlx.core as mx

from ollama_img.errors import UserError
from ollama_img.models.chat_tokenizer import load_tokenizer
from ollama_img.models.configs import Qwen3Config
from ollama_img.models.flux2 import ARCHITECTURE
from ollama_img.models.flux2.config import Flux2Config, Flux2VaeConfig
from ollama_img.models.flux2.pipeline import Flux2KleinPipeline
from ollama_img.models.flux2.text_encoder import OUT_LAYERS, SEQUENCE_LENGTH, PromptEncoder
from ollama_img.models.flux2.transformer import Flux2Transformer
from ollama_img.models.flux2.vae import AutoencoderKLFlux2
from ollama_img.models.loading import ComponentLoader
from ollama_img.models.qwen3 import Qwen3TextEncoder
from ollama_img.weights import WeightSource


def load(
    source: WeightSource, dtype: mx.Dtype | None = None, *, quantized: str | None = None
) -> Flux2KleinPipeline:
    """Read configs and weights from `source` and build the MLX pipeline (weights evaluated, ready to run).

    `dtype` overrides the compute dtype; `quantized` forces one way of running quantized weights
    (see `ComponentLoader`).
    """
    label = source.label
    tokenizer = load_tokenizer(source, enable_thinking=False, max_tokens=SEQUENCE_LENGTH)
    loader = ComponentLoader(source, dtype=dtype, quantized=quantized)
    te_cfg = loader.config(Qwen3Config.from_dict, "text_encoder/config.json")
    tr_cfg = loader.config(Flux2Config.from_dict, "transformer/config.json")
    vae_cfg = loader.config(Flux2VaeConfig.from_dict, "vae/config.json")
    if tr_cfg.joint_attention_dim != len(OUT_LAYERS) * te_cfg.hidden_size:
        raise UserError(
            f"{label}: the transformer takes {tr_cfg.joint_attention_dim} text features, but the text "
            f"encoder gives {len(OUT_LAYERS)} x {te_cfg.hidden_size}"
        )
    if tr_cfg.in_channels != vae_cfg.token_features:
        raise UserError(
            f"{label}: the transformer takes {tr_cfg.in_channels} features, the VAE gives {vae_cfg.token_features}"
        )
    try:
        text_encoder = Qwen3TextEncoder(te_cfg, OUT_LAYERS)
        prompt_encoder = PromptEncoder(tokenizer, text_encoder)
    except ValueError as exc:
        raise UserError(f"{label}: {exc}") from None
    loader.load("text_encoder", text_encoder)
    transformer = loader.load("transformer", Flux2Transformer(tr_cfg), fuse=Flux2Transformer.fuse_units)
    vae = loader.load("vae", AutoencoderKLFlux2(vae_cfg))
    return Flux2KleinPipeline(
        prompt_encoder=prompt_encoder,
        transformer=transformer,
        vae=vae,
        scheduler_config=source.read_json("scheduler/scheduler_config.json"),
        distilled=bool(source.read_json("model_index.json").get("is_distilled", False)),
        capabilities=ARCHITECTURE.capabilities_of(source),
        dtype=loader.dtype,
        name=label,
        digest=source.digest,
    )
