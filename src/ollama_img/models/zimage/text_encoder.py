"""Qwen3, as Z-Image uses it: the hidden states of the second-to-last layer are the prompt embedding.

Attribute names follow the checkpoint (`layers.N.self_attn.q_proj`, ...), so loading is a straight
mapping once the `model.` prefix of the released files is dropped. Because diffusers takes
`hidden_states[-2]`, the last decoder layer and the final norm never influence the result: they are
not built and their weights are not loaded.
"""

from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn


@dataclass(frozen=True)
class Qwen3Config:
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1_000_000.0

    @classmethod
    def from_dict(cls, cfg: dict) -> "Qwen3Config":
        rope_theta = cfg.get("rope_theta") or (cfg.get("rope_parameters") or {}).get(
            "rope_theta", 1_000_000.0
        )
        scaling = cfg.get("rope_scaling") or {}
        if scaling and scaling.get("rope_type", scaling.get("type", "default")) != "default":
            raise ValueError(f"unsupported text encoder rope_scaling {scaling}")
        return cls(
            hidden_size=cfg["hidden_size"],
            num_hidden_layers=cfg["num_hidden_layers"],
            num_attention_heads=cfg["num_attention_heads"],
            num_key_value_heads=cfg.get("num_key_value_heads", cfg["num_attention_heads"]),
            head_dim=cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"],
            intermediate_size=cfg["intermediate_size"],
            vocab_size=cfg["vocab_size"],
            rms_norm_eps=cfg.get("rms_norm_eps", 1e-6),
            rope_theta=float(rope_theta),
        )


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

    def __call__(self, x: mx.array, mask: mx.array | str = "causal", keys: int | None = None) -> mx.array:
        """`keys`: attend to the first `keys` positions only (the rest are padding), with `mask` (L, keys)."""
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

    def __call__(self, x: mx.array, mask: mx.array | str = "causal", keys: int | None = None) -> mx.array:
        x = x + self.self_attn(self.input_layernorm(x), mask, keys)
        return x + self.mlp(self.post_attention_layernorm(x))


class Qwen3TextEncoder(nn.Module):
    """Token ids -> hidden states after all but the last decoder layer (diffusers' hidden_states[-2]).

    `n_layers` builds only the first decoder layers (and `final_norm` the last norm) for callers that
    read other hidden states (`hidden_states`); weights of what is not built are not loaded.
    """

    def __init__(self, cfg: Qwen3Config, n_layers: int | None = None, final_norm: bool = False):
        super().__init__()
        self.config = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        count = cfg.num_hidden_layers - 1 if n_layers is None else n_layers
        self.layers = [DecoderLayer(cfg) for _ in range(count)]
        if final_norm:
            self.norm = nn.RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps)

    def __call__(self, input_ids: mx.array) -> mx.array:
        x = self.embed_tokens(input_ids)
        for layer in self.layers:
            x = layer(x)
        return x

    def hidden_states(
        self, input_ids: mx.array, indices, mask: mx.array | str = "causal", keys: int | None = None
    ) -> list[mx.array]:
        """transformers' `hidden_states[k]` for each k in `indices`: 0 is the embedding, k the output of
        layer k, and k = num_hidden_layers the final norm's output (it needs `final_norm`). `mask` and
        `keys` are the attention's (see `Attention`)."""
        wanted = set(indices)
        outputs = {}
        x = self.embed_tokens(input_ids)
        if 0 in wanted:
            outputs[0] = x
        for k, layer in enumerate(self.layers, 1):
            if k > max(wanted):
                break
            x = layer(x, mask, keys)
            if k in wanted:
                outputs[k] = self.norm(x) if k == self.config.num_hidden_layers else x
        return [outputs[k] for k in indices]

    def sanitize(self, weights: dict[str, mx.array]) -> dict[str, mx.array]:
        """Checkpoint names -> module names: drop the `model.` prefix and the weights of what is not built."""
        built = len(self.layers)
        out = {}
        for name, value in weights.items():
            name = name.removeprefix("model.")
            if name.startswith("lm_head.") or (name.startswith("norm.") and "norm" not in self):
                continue
            if name.startswith("layers.") and int(name.split(".", 2)[1]) >= built:
                continue
            out[name] = value
        return out
