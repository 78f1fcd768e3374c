"""Build the Z-Image pipeline from any weight source (a model folder or the store)."""

from __future__ import annotations

import mlx.core as mx

from ollama_img.models.autoencoder_kl import AutoencoderKL
from ollama_img.models.chat_tokenizer import load_tokenizer
from ollama_img.models.configs import AutoencoderKLConfig, Qwen3Config
from ollama_img.models.loading import ComponentLoader
from ollama_img.models.qwen3 import Qwen3TextEncoder
from ollama_img.models.zimage import ARCHITECTURE
from ollama_img.models.zimage.config import ZImageConfig
from ollama_img.models.zimage.pipeline import ZImagePipeline
from ollama_img.models.zimage.transformer import ZImageTransformer
from ollama_img.weights import WeightSource

TEXT_LAYER = -2  # diffusers' ZImagePipeline embeds prompts with hidden_states[-2]


def load(
    source: WeightSource, dtype: mx.Dtype | None = None, *, quantized: str | None = None
) -> ZImagePipeline:
    """Read configs and weights from `source` and build the MLX pipeline (weights evaluated, ready to run).

    `dtype` overrides the compute dtype; `quantized` forces one way of running quantized weights
    (see `ComponentLoader`).
    """
    tokenizer = load_tokenizer(source, enable_thinking=True)
    loader = ComponentLoader(source, dtype=dtype, quantized=quantized)
    text_encoder = loader.load(
        "text_encoder",
        Qwen3TextEncoder(loader.config(Qwen3Config.from_dict, "text_encoder/config.json"), (TEXT_LAYER,)),
    )
    transformer = loader.load(
        "transformer",
        ZImageTransformer(loader.config(ZImageConfig.from_dict, "transformer/config.json")),
        fuse=ZImageTransformer.fuse_projections,
    )
    vae = loader.load("vae", AutoencoderKL(loader.config(AutoencoderKLConfig.from_dict, "vae/config.json")))
    return ZImagePipeline(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        transformer=transformer,
        vae=vae,
        scheduler_config=source.read_json("scheduler/scheduler_config.json"),
        capabilities=ARCHITECTURE.capabilities_of(source),
        dtype=loader.dtype,
        name=source.label,
        digest=source.digest,
    )
