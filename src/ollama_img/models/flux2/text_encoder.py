"""The prompt as FLUX.2 [klein] sees it: Qwen3's chat template (thinking off), padded to 512 tokens, and
the hidden states of three decoder layers side by side.

Flux2KleinPipeline pads every prompt to `max_sequence_length` and the transformer attends to all of
those tokens, pads included, so the padded positions are part of the embedding: each pad token's
hidden state comes from attending (causally, by position) to the real tokens only. The layers are
transformers' `hidden_states` indices (0 is the embedding), (9, 18, 27) by default; layers after the
last one used are never built.
"""

from __future__ import annotations

import mlx.core as mx

from ollama_img.models.zimage.text_encoder import Qwen3Config, Qwen3TextEncoder
from ollama_img.models.zimage.tokenizer import MAX_TOKENS, PromptTokenizer

OUT_LAYERS = (9, 18, 27)  # Flux2KleinPipeline's text_encoder_out_layers
SEQUENCE_LENGTH = MAX_TOKENS  # Flux2KleinPipeline's max_sequence_length (512)


def build_text_encoder(cfg: Qwen3Config, layers: tuple[int, ...] = OUT_LAYERS) -> Qwen3TextEncoder:
    """A Qwen3 encoder with the decoder layers (and, if the last is used, the final norm) `layers` need."""
    if not layers or min(layers) < 0 or max(layers) > cfg.num_hidden_layers:
        raise ValueError(f"text encoder layers {layers} do not fit a {cfg.num_hidden_layers}-layer model")
    return Qwen3TextEncoder(cfg, n_layers=max(layers), final_norm=max(layers) == cfg.num_hidden_layers)


class PromptEncoder:
    """Prompt -> (1, SEQUENCE_LENGTH, len(layers) * hidden) embedding, as `_get_qwen3_prompt_embeds`."""

    def __init__(
        self, tokenizer: PromptTokenizer, encoder: Qwen3TextEncoder, layers: tuple[int, ...] = OUT_LAYERS
    ):
        self.tokenizer = tokenizer
        self.encoder = encoder
        self.layers = tuple(layers)
        pad = tokenizer.special_tokens.get("pad_token")
        self.pad_id = tokenizer.tokenizer.token_to_id(pad) if pad else None
        if self.pad_id is None:
            raise ValueError("the tokenizer has no pad token")

    def token_ids(self, prompt: str) -> tuple[list[int], int]:
        """The ids padded on the right to SEQUENCE_LENGTH, and how many are real."""
        ids = self.tokenizer.encode(prompt, enable_thinking=False)
        return ids + [self.pad_id] * (SEQUENCE_LENGTH - len(ids)), len(ids)

    def __call__(self, prompt: str, dtype: mx.Dtype) -> mx.array:
        ids, real = self.token_ids(prompt)
        # Causal attention to the real tokens only (no query sees a pad key): the keys stop at the last
        # real token, which spares the pads' (L - real) x (L - real) part of every attention.
        mask = mx.arange(real)[None, :] <= mx.arange(SEQUENCE_LENGTH)[:, None]
        states = self.encoder.hidden_states(mx.array([ids]), self.layers, mask, keys=real)
        return mx.concatenate(states, axis=-1).astype(dtype)
