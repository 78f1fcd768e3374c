"""Qwen3 as a text encoder: the hidden states of chosen layers are the prompt embedding.

Families differ in which layers they take: Z-Image the second-to-last (`hidden_states[-2]`), FLUX.2
[klein] several stacked (`text_encoder_out_layers`). Layers are numbered as transformers numbers
`hidden_states`: 0 is the token embedding, k the output of decoder layer k, and the last
(`num_hidden_layers`, or -1) the output of the final norm. Decoder layers past the deepest one asked
for never influence the result: they are not built and their weights are not loaded.

Attribute names follow the checkpoint (`layers.N.self_attn.q_proj`, ...), so loading is a straight
mapping once the `model.` prefix of a Qwen3Model or Qwen3ForCausalLM checkpoint is dropped.
"""

from __future__ import annotations

from collections.abc import Sequence

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from ollama_img.memory.plan import Evaluation
from ollama_img.models.configs import Qwen3Config
from ollama_img.models.evaluation import Chunks

__all__ = ["Qwen3Config", "Qwen3TextEncoder"]


class Attention(nn.Module):
    def __init__(self, cfg: Qwen3Config):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = (
            cfg.num_attention_heads,
            cfg.num_key_value_heads,
            cfg.head_dim,
        )
        self.scale = cfg.head_dim**-0.5
        self.q_proj = nn.Linear(cfg.hidden_size, self.n_heads * cfg.head_dim, bias=False)
        self.k_proj = nn.Linear(cfg.hidden_size, self.n_kv_heads * cfg.head_dim, bias=False)
        self.v_proj = nn.Linear(cfg.hidden_size, self.n_kv_heads * cfg.head_dim, bias=False)
        self.o_proj = nn.Linear(self.n_heads * cfg.head_dim, cfg.hidden_size, bias=False)
        self.q_norm = nn.RMSNorm(cfg.head_dim, eps=cfg.rms_norm_eps)
        self.k_norm = nn.RMSNorm(cfg.head_dim, eps=cfg.rms_norm_eps)
        self.rope = nn.RoPE(cfg.head_dim, traditional=False, base=cfg.rope_theta)

    def __call__(self, x: mx.array, mask: mx.array | str, keys: int | None) -> mx.array:
        """`keys`: only the first `keys` positions are attended to (`mask` is (B, 1, L, keys) then)."""
        b, length, _ = x.shape
        q = self.q_norm(self.q_proj(x).reshape(b, length, self.n_heads, -1)).transpose(0, 2, 1, 3)
        k = self.k_norm(self.k_proj(x).reshape(b, length, self.n_kv_heads, -1)).transpose(0, 2, 1, 3)
        v = self.v_proj(x).reshape(b, length, self.n_kv_heads, -1).transpose(0, 2, 1, 3)
        q, k = self.rope(q), self.rope(k)
        if keys is not None:
            k, v = k[:, :, :keys], v[:, :, :keys]
        out = mx.fast.scaled_dot_product_attention(q, k, v, scale=self.scale, mask=mask)
        return self.o_proj(out.transpose(0, 2, 1, 3).reshape(b, length, -1))


class MLP(nn.Module):
    def __init__(self, cfg: Qwen3Config):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def __call__(self, x: mx.array) -> mx.array:
        return self.down_proj(nn.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: Qwen3Config):
        super().__init__()
        self.self_attn = Attention(cfg)
        self.mlp = MLP(cfg)
        self.input_layernorm = nn.RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps)
        self.post_attention_layernorm = nn.RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps)

    def __call__(self, x: mx.array, mask: mx.array | str, keys: int | None) -> mx.array:
        x = x + self.self_attn(self.input_layernorm(x), mask, keys)
        return x + self.mlp(self.post_attention_layernorm(x))


class Qwen3TextEncoder(nn.Module):
    """Token ids -> the hidden states of `hidden_layers`, side by side along the features.

    With one layer the output is (B, L, hidden); with n it is (B, L, n * hidden), each token's states
    in the order asked (as diffusers stacks them for FLUX.2 and flattens per token).
    """

    def __init__(self, cfg: Qwen3Config, hidden_layers: Sequence[int] = (-2,)):
        super().__init__()
        count = cfg.num_hidden_layers + 1
        if not hidden_layers or any(not -count <= k < count for k in hidden_layers):
            raise ValueError(f"hidden layers must be in [-{count}, {count}), got {list(hidden_layers)}")
        self.config = cfg
        self.hidden_layers = tuple(k % count for k in hidden_layers)
        deepest = max(self.hidden_layers)
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = [DecoderLayer(cfg) for _ in range(min(deepest, cfg.num_hidden_layers))]
        if deepest == cfg.num_hidden_layers:  # the output of the final norm is asked for
            self.norm = nn.RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps)

    def __call__(
        self,
        input_ids: mx.array,
        attention_mask: mx.array | None = None,
        evaluation: Evaluation | None = None,
    ) -> mx.array:
        """`attention_mask` (B, L), 1 for real tokens and 0 for padding, as a tokenizer returns it.

        Keys past the last real token of every prompt are left out of attention altogether (no query
        attends to them): a prompt right-padded to 512 tokens costs attention over its real tokens only.
        `evaluation` (a memory plan's) evaluates the layers a chunk at a time; None: as one graph.
        """
        mask: mx.array | str = "causal"
        keys = None
        if attention_mask is not None:
            real = np.flatnonzero(np.asarray(attention_mask).any(axis=0))
            keys = int(real[-1]) + 1 if real.size else 1
            causal = mx.arange(keys)[None, :] <= mx.arange(input_ids.shape[1])[:, None]
            mask = causal[None, None] & (attention_mask[:, None, None, :keys] != 0)
        x = self.embed_tokens(input_ids)
        states = {0: x}
        chunks = Chunks(evaluation)
        for i, layer in enumerate(self.layers, 1):
            x = layer(x, mask, keys)
            states[i] = x
            chunks.after(i - 1, x)
        if "norm" in self:
            states[self.config.num_hidden_layers] = self.norm(x)
        chosen = [states[k] for k in self.hidden_layers]
        return chosen[0] if len(chosen) == 1 else mx.concatenate(chosen, axis=-1)

    def parameter_name(self, checkpoint_name: str) -> str | None:
        """This module's name for a checkpoint tensor, or None for one it does not use (the LM head, and
        layers past the deepest hidden state asked for)."""
        name = checkpoint_name.removeprefix("model.")
        head, _, rest = name.partition(".")
        if head == "lm_head" or (head == "norm" and "norm" not in self):
            return None
        index = rest.partition(".")[0]
        if head == "layers" and index.isdigit() and int(index) >= len(self.layers):
            return None
        return name
