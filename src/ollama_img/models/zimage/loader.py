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
from ollama_img.models.reading import Beside
from ollama_img.models.residency import Parts
from ollama_img.models.zimage import ARCHITECTURE
from ollama_img.models.zimage.config import TEXT_LAYER, ZImageConfig
from ollama_img.models.zimage.pipeline import ZImagePipeline
from ollama_img.models.zimage.transformer import ZImageTransformer
from ollama_img.phases import phase
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
    prompts: tuple[str, ...] = (),
) -> ZImagePipeline:
    """Read configs and weights from `source` and build the MLX pipeline (weights evaluated, ready to run).

    `dtype` overrides the compute dtype; `quantized` forces one way of running quantized weights (see
    `ComponentLoader`). `plan` (`memory.plan`) says which components load now (the others load when a
    phase needs them) and how quantized weights compute; None loads everything now. `planner`, when
    given, plans each generation again for its size and prompt. `adapters` (checked already:
    `ollama_img.adapters.resolve`) are applied to the transformer whenever it loads, as `lora_strategy`
    says (`models.lora_layers`); a generation may ask for more. `prompts` (the first request's) are
    encoded while the transformer's weights are read, when the plan holds both at load.
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
    early = [p for p in dict.fromkeys(prompts) if p] if {"text_encoder", "transformer"} <= set(now) else []
    first = [n for n in now if n != "transformer"] if early else list(now)
    parts = Parts({name: loaders[name]() for name in loaders if name in first}, loaders)
    pipe = ZImagePipeline(
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
    if early:
        parts.put("transformer", _encode_beside(pipe, early, load_transformer))
    return pipe


def _encode_beside(pipe: ZImagePipeline, prompts: list[str], load_transformer) -> ZImageTransformer:
    """The transformer, read on a thread of its own while this thread encodes `prompts` (kept in the
    pipeline's prompt cache). The first request then finds its embeddings made, and this thread, which
    makes the images, has already set up its GPU libraries (cuBLAS handles are per thread): after an
    engine restart that set-up cost the first image 0.5 s (bench/RESULTS.md, "Issues 10 and 11 on an
    H100")."""
    transformer = Beside(load_transformer, name="ollama-img-load-transformer")
    try:
        with phase("text"):
            for prompt in prompts:
                pipe.encode_prompt(prompt)
    finally:
        with phase("read"):  # what is left of the transformer's read, once the prompts are encoded
            module = transformer.result()
    return module
