"""Z-Image (Tongyi-MAI): a single-stream DiT on Qwen3 prompt embeddings and the Flux VAE.

This package's `ARCHITECTURE` is what the store, the CLI and the engine know of the family (no MLX
here); `loader.load` builds the MLX pipeline.
"""

from ollama_img.models.architecture import (
    CHAT_TOKENIZER,
    QWEN3_QUANTIZED,
    QWEN3_TEXT_ENCODER,
    SCHEDULER,
    Architecture,
    Component,
    ReadJson,
)
from ollama_img.models.configs import AutoencoderKLConfig
from ollama_img.models.interface import Capabilities, SizeLimits
from ollama_img.models.lora import LoraRule
from ollama_img.models.zimage.config import PATCH, ZImageConfig
from ollama_img.models.zimage.memory import memory_profile
from ollama_img.quantization import QuantRule


def capabilities(read_json: ReadJson) -> Capabilities:
    """Guidance with a negative prompt, a start image with a mask, TeaCache and LoRA; sides in steps of the
    VAE's scale times the patch size, up to the transformer's RoPE table lengths (8192 for the released
    model)."""
    vae = AutoencoderKLConfig.from_dict(read_json("vae/config.json"))
    transformer = ZImageConfig.from_dict(read_json("transformer/config.json"))
    unit = vae.scale_factor * PATCH
    _, rows, cols = transformer.axes_lens
    return Capabilities(
        sizes=SizeLimits(unit=unit, max_width=cols * unit, max_height=rows * unit),
        guidance=True,
        negative_prompt=True,
        image_input=True,
        mask=True,
        teacache=True,
        lora=True,
    )


# Chosen from measured error (bench/RESULTS.md, "Quantization").
QUANTIZATION = QuantRule(
    patterns={
        "transformer": (
            r"(layers|noise_refiner|context_refiner)\.\d+\."
            r"(attention\.(to_q|to_k|to_v|to_out\.0)|feed_forward\.w[123])\.weight"
        ),
        "text_encoder": QWEN3_QUANTIZED,
    },
    text=(
        "Linear weights of the transformer's layers, noise_refiner and context_refiner blocks (attention "
        "q, k, v, out; feed-forward w1, w2, w3) and of the text encoder's decoder layers (q, k, v, o, "
        "gate, up, down), where the input size is a multiple of the group size; embedders, adaLN, "
        "final layer, pad tokens, norms and the VAE keep their dtype"
    ),
)

# Adapters change the transformer's Linear layers. The original Z-Image trainers name its attention's
# fused projection `qkv` and its output `out`; the loader fuses q/k/v and the SwiGLU's w1/w3 (see
# `transformer.ZImageTransformer.fuse_projections`), and adapters follow.
LORA = LoraRule(
    component="transformer",
    alternates={
        "attention.qkv": ("attention.to_q", "attention.to_k", "attention.to_v"),
        "attention.out": ("attention.to_out.0",),
    },
    fused={
        "attention.to_qkv": ("attention.to_q", "attention.to_k", "attention.to_v"),
        "feed_forward.w13": ("feed_forward.w1", "feed_forward.w3"),
    },
)

ARCHITECTURE = Architecture(
    class_name="ZImagePipeline",
    family="z-image",
    loader="ollama_img.models.zimage.loader",
    components=(
        SCHEDULER,
        QWEN3_TEXT_ENCODER,
        CHAT_TOKENIZER,
        Component("transformer", weights="diffusion_pytorch_model", required_files=("config.json",)),
        Component("vae", weights="diffusion_pytorch_model", required_files=("config.json",)),
    ),
    capabilities=capabilities,
    size_unit=16,
    quantization=QUANTIZATION,
    memory=memory_profile,
    lora=LORA,
    priming="ollama_img.models.zimage.priming",
)
