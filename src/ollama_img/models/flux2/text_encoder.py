"""The prompt as FLUX.2 [klein] sees it: Qwen3's chat template (thinking off), padded to 512 tokens, and
the hidden states of three decoder layers side by side.

Flux2KleinPipeline pads every prompt to `max_sequence_length` and the transformer attends to all of
those tokens, pads included, so the padded positions are part of the embedding: each pad token's
hidden state comes from attending (causally, by position) to the real tokens only. The layers are
transformers' `hidden_states` indices (0 is the embedding), (9, 18, 27) by default.
"""

from __future__ import annotations

import mlx.core as mx

from ollama_img.models.chat_tokenizer import MAX_TOKENS, ChatTokenizer
from ollama_img.models.qwen3 import Qwen3TextEncoder

OUT_LAYERS = (9, 18, 27)  # Flux2KleinPipeline's text_encoder_out_layers
SEQUENCE_LENGTH = MAX_TOKENS  # Flux2KleinPipeline's max_sequence_length (512)


class PromptEncoder:
    """Prompt -> (1, SEQUENCE_LENGTH, len(layers) * hidden) embedding, as `_get_qwen3_prompt_embeds`."""

    def __init__(self, tokenizer: ChatTokenizer, encoder: Qwen3TextEncoder):
        if tokenizer.pad_id is None:
            raise ValueError("the tokenizer has no pad token")
        self.tokenizer = tokenizer
        self.encoder = encoder

    def token_ids(self, prompt: str) -> tuple[list[int], int]:
        """The ids padded on the right to SEQUENCE_LENGTH, and how many are real."""
        ids = self.tokenizer.encode(prompt)
        return ids + [self.tokenizer.pad_id] * (SEQUENCE_LENGTH - len(ids)), len(ids)

    def __call__(self, prompt: str, dtype: mx.Dtype) -> mx.array:
        ids, real = self.token_ids(prompt)
        mask = mx.array([[1] * real + [0] * (SEQUENCE_LENGTH - real)])
        return self.encoder(mx.array([ids]), mask).astype(dtype)
