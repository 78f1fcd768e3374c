"""Z-Image's memory profile: its components' roles and working sets, from its configs (plain Python)."""

from __future__ import annotations

from ollama_img.memory.profile import DECODER, DENOISER, ENCODER, MemoryProfile, Stored, component
from ollama_img.models.architecture import ReadJson
from ollama_img.models.configs import AutoencoderKLConfig, Qwen3Config
from ollama_img.models.memory_estimates import autoencoder_decode_bytes, dit_blocks, qwen3_layers
from ollama_img.models.zimage.config import PATCH, SEQ_MULTIPLE, TEXT_LAYER, ZImageConfig

MAX_PROMPT_TOKENS = 512  # chat_tokenizer.MAX_TOKENS: diffusers' max_sequence_length
TEMPLATE_TOKENS = 16  # the chat template's role markers and generation prompt around a prompt


def _padded(n: int) -> int:
    return n + (-n) % SEQ_MULTIPLE


def memory_profile(read_json: ReadJson, stored: dict[str, Stored]) -> MemoryProfile:
    text = Qwen3Config.from_dict(read_json("text_encoder/config.json"))
    transformer = ZImageConfig.from_dict(read_json("transformer/config.json"))
    vae = AutoencoderKLConfig.from_dict(read_json("vae/config.json"))
    hidden = int(transformer.dim / 3 * 8)
    denoiser = dit_blocks(
        transformer.dim, hidden, transformer.n_heads, transformer.head_dim, transformer.n_layers
    )
    unit = vae.scale_factor * PATCH

    def sequence(width: int, height: int, prompt_tokens: int) -> int:
        return _padded((width // unit) * (height // unit)) + _padded(prompt_tokens)

    def decoder_bytes(width: int, height: int, itemsize: int, mode: str, unfolded: bool) -> int:
        return autoencoder_decode_bytes(vae, width, height, itemsize, mode, unfolded)

    # Fusing q/k/v and w1/w3 after loading writes one block's fused copies before the originals go.
    fused_block = (3 * transformer.dim + 2 * hidden) * transformer.dim * 2
    return MemoryProfile(
        family="z-image",
        components=(
            component("text_encoder", ENCODER, stored),
            component("transformer", DENOISER, stored),
            component("vae", DECODER, stored),
        ),
        default_width=1024,
        default_height=1024,
        max_prompt_tokens=MAX_PROMPT_TOKENS,
        template_tokens=TEMPLATE_TOKENS,
        encoder=qwen3_layers(text, text.num_hidden_layers + 1 + TEXT_LAYER),
        denoiser=denoiser,
        sequence=sequence,
        decoder_bytes=decoder_bytes,
        load_slack=2 * fused_block,
    )
