"""Build the Z-Image pipeline from any weight source (a model folder or the store), as its memory plan says."""

from __future__ import annotations

import mlx.core as mx

from ollama_img.adapters import Adapter
from ollama_img.adapters import resolve as resolve_adapters
from ollama_img.memory.plan import MemoryPlan, Planner
from ollama_img.models.autoencoder_kl import AutoencoderKL
from ollama_img.models.chat_tokenizer import load_tokenizer
from ollama_img.models.configs import AutoencoderKLConfig, Qwen3Config
from ollama_img.models.loading import ComponentLoader
from ollama_img.models.lora_layers import ComponentAdapters
from ollama_img.models.qwen3 import Qwen3TextEncoder
from ollama_img.models.residency import Parts
from ollama_img.models.zimage import ARCHITECTURE
from ollama_img.models.zimage.config import TEXT_LAYER, ZImageConfig
from ollama_img.models.zimage.pipeline import ZImagePipeline
from ollama_img.models.zimage.transformer import ZImageTransformer
from ollama_img.weights import WeightSource


def load(
    source: WeightSource,
    dtype: mx.Dtype | None = None,
    *,
    quantized: str | None = None,
    plan: MemoryPlan | None = None,
    planner: Planner | None = None,
    adapters: tuple[Adapter, ...] = (),
    lora_strategy: str | None = None,
) -> ZImagePipeline:
    """Read configs and weights from `source` and build the MLX pipeline (weights evaluated, ready to run).

    `dtype` overrides the compute dtype; `quantized` forces one way of running quantized weights (see
    `ComponentLoader`). `plan` (`memory.plan`) says which components load now (the others load when a
    phase needs them) and how quantized weights compute; None loads everything now. `planner`, when
    given, plans each generation again for its size and prompt. `adapters` (checked already:
    `ollama_img.adapters.resolve`) are applied to the transformer whenever it loads, as `lora_strategy`
    says (`models.lora_layers`); a generation may ask for more.
    """
    tokenizer = load_tokenizer(source, enable_thinking=True)
    strategies = {c.name: c.compute for c in plan.components} if plan else None
    loader = ComponentLoader(source, dtype=dtype, quantized=quantized, strategies=strategies)
    text_config = loader.config(Qwen3Config.from_dict, "text_encoder/config.json")
    transformer_config = loader.config(ZImageConfig.from_dict, "transformer/config.json")
    vae_config = loader.config(AutoencoderKLConfig.from_dict, "vae/config.json")
    lora = ComponentAdapters(
        ARCHITECTURE.lora,
        lambda specs: resolve_adapters(specs, source, ARCHITECTURE),
        adapters,
        lora_strategy,
    )

    def load_transformer() -> ZImageTransformer:
        module = loader.load(
            "transformer", ZImageTransformer(transformer_config), fuse=ZImageTransformer.fuse_units
        )
        return lora.attach(module, loader.dtype)

    loaders = {
        "text_encoder": lambda: loader.load("text_encoder", Qwen3TextEncoder(text_config, (TEXT_LAYER,))),
        "transformer": load_transformer,
        "vae": lambda: loader.load("vae", AutoencoderKL(vae_config)),
    }
    now = plan.holds["load"] if plan else tuple(loaders)
    parts = Parts({name: load_now() for name, load_now in loaders.items() if name in now}, loaders)
    return ZImagePipeline(
        tokenizer=tokenizer,
        parts=parts,
        transformer_config=transformer_config,
        scheduler_config=source.read_json("scheduler/scheduler_config.json"),
        capabilities=ARCHITECTURE.capabilities_of(source),
        dtype=loader.dtype,
        name=source.label,
        digest=source.digest,
        memory_plan=plan,
        planner=planner,
        lora=lora,
    )
