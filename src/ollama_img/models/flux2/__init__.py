"""FLUX.2 [klein] (Black Forest Labs; 4B and 9B, step-distilled and base): an MMDiT on the stacked hidden
states of a Qwen3 text encoder, editing with reference images, and the FLUX.2 VAE.

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
from ollama_img.models.flux2.config import Flux2VaeConfig
from ollama_img.models.interface import Capabilities, SizeLimits
from ollama_img.quantization import QuantRule

MAX_SIDE = 4096  # pixels per side; the area is capped too (pipeline.MAX_PIXELS)
MAX_REFERENCES = 10  # diffusers sets no limit; each reference adds up to 4096 tokens to every step


def capabilities(read_json: ReadJson) -> Capabilities:
    """Guidance (the base models guide against the empty prompt; the distilled ones, as diffusers, ignore
    the value) and up to MAX_REFERENCES reference images; sides in steps of one token (16 pixels)."""
    unit = Flux2VaeConfig.from_dict(read_json("vae/config.json")).size_unit
    return Capabilities(
        sizes=SizeLimits(unit=unit, max_width=MAX_SIDE, max_height=MAX_SIDE),
        guidance=True,
        reference_images=MAX_REFERENCES,
    )


QUANTIZATION = QuantRule(
    patterns={
        "transformer": (
            r"transformer_blocks\.\d+\.(attn\.(to_q|to_k|to_v|to_out\.0|add_q_proj|add_k_proj|add_v_proj|to_add_out)"
            r"|ff\.linear_(in|out)|ff_context\.linear_(in|out))\.weight"
            r"|single_transformer_blocks\.\d+\.attn\.(to_qkv_mlp_proj|to_out)\.weight"
        ),
        "text_encoder": QWEN3_QUANTIZED,
    },
    text=(
        "Linear weights of the transformer's double-stream blocks (image and text attention q, k, v, out; "
        "both feed-forwards) and single-stream blocks (joint input and output projections), and of the "
        "text encoder's decoder layers (q, k, v, o, gate, up, down), where the input size is a multiple of "
        "the group size; embedders, modulation, the final layer, norms and the VAE keep their dtype"
    ),
)

ARCHITECTURE = Architecture(
    class_name="Flux2KleinPipeline",
    family="flux2-klein",
    loader="ollama_img.models.flux2.loader",
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
)
