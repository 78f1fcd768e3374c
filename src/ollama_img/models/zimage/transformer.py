"""ZImageTransformer2DModel in MLX: a single-stream DiT over image and caption tokens.

The layout follows diffusers 0.42 (attribute names are the checkpoint's): the image latents are cut
into 2x2 patches and refined by `noise_refiner` blocks (timestep-modulated), the caption embedding by
`context_refiner` blocks (not modulated), then image and caption tokens go through `layers` as one
sequence, image first. Each part is padded to a multiple of 32 tokens with a learned pad token.
Positions are 3-D (caption index, row, column) and rotate query/key pairs with RoPE.

The caption branch does not depend on the timestep, so `encode_caption` runs once per generation
and its result (`Caption`) is reused by every step.
"""

import math
from dataclasses import dataclass
from functools import lru_cache

import mlx.core as mx
import mlx.nn as nn
import numpy as np

ADALN_DIM = 256  # width of the timestep embedding that drives adaLN
SEQ_MULTIPLE = 32  # every token group is padded to a multiple of this
PATCH = 2


@dataclass(frozen=True)
class ZImageConfig:
    dim: int = 3840
    n_layers: int = 30
    n_refiner_layers: int = 2
    n_heads: int = 30
    norm_eps: float = 1e-5
    cap_feat_dim: int = 2560
    axes_dims: tuple[int, ...] = (32, 48, 48)
    axes_lens: tuple[int, ...] = (1024, 512, 512)
    rope_theta: float = 256.0
    t_scale: float = 1000.0
    in_channels: int = 16

    @classmethod
    def from_dict(cls, cfg: dict) -> "ZImageConfig":
        if list(cfg.get("all_patch_size", [2])) != [2] or list(cfg.get("all_f_patch_size", [1])) != [1]:
            raise ValueError("only patch size 2 (frame patch 1) is supported")
        if cfg.get("n_kv_heads", cfg.get("n_heads")) != cfg.get("n_heads"):
            raise ValueError("n_kv_heads must equal n_heads")
        if not cfg.get("qk_norm", True):
            raise ValueError("only qk_norm=True is supported")
        if cfg.get("siglip_feat_dim") is not None:
            raise ValueError("the Omni (SigLIP) variant is not supported")
        c = cls(
            dim=cfg.get("dim", 3840),
            n_layers=cfg.get("n_layers", 30),
            n_refiner_layers=cfg.get("n_refiner_layers", 2),
            n_heads=cfg.get("n_heads", 30),
            norm_eps=cfg.get("norm_eps", 1e-5),
            cap_feat_dim=cfg.get("cap_feat_dim", 2560),
            axes_dims=tuple(cfg.get("axes_dims", (32, 48, 48))),
            axes_lens=tuple(cfg.get("axes_lens", (1024, 512, 512))),
            rope_theta=float(cfg.get("rope_theta", 256.0)),
            t_scale=float(cfg.get("t_scale", 1000.0)),
            in_channels=cfg.get("in_channels", 16),
        )
        if c.dim // c.n_heads != sum(c.axes_dims):
            raise ValueError("head dim must equal sum(axes_dims)")
        return c

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def adaln_dim(self) -> int:
        return min(self.dim, ADALN_DIM)


# ---------------------------------------------------------------------------------------------
# Rotary position embedding over 3 axes


def rope_tables(positions: np.ndarray, cfg: ZImageConfig) -> tuple[mx.array, mx.array]:
    """cos and sin, (tokens, head_dim // 2), for integer positions (tokens, 3).

    Angles are formed in float64 and rounded to float32 as diffusers does, before cos/sin.
    """
    angles = []
    for axis, d in enumerate(cfg.axes_dims):
        freqs = 1.0 / (cfg.rope_theta ** (np.arange(0, d, 2, dtype=np.float64) / d))
        angles.append(np.outer(positions[:, axis].astype(np.float64), freqs).astype(np.float32))
    a = np.concatenate(angles, axis=1).astype(np.float64)
    return mx.array(np.cos(a).astype(np.float32)), mx.array(np.sin(a).astype(np.float32))


def caption_positions(padded_len: int) -> np.ndarray:
    """Caption token k (pads included) sits at (1 + k, 0, 0)."""
    pos = np.zeros((padded_len, 3), dtype=np.int64)
    pos[:, 0] = np.arange(1, padded_len + 1)
    return pos


def image_positions(rows: int, cols: int, caption_padded_len: int) -> np.ndarray:
    """Image token (r, c) sits at (caption_len + 1, r, c); pad tokens at (0, 0, 0)."""
    n = rows * cols
    pos = np.zeros((padded(n), 3), dtype=np.int64)
    pos[:n, 0] = caption_padded_len + 1
    pos[:n, 1] = np.repeat(np.arange(rows), cols)
    pos[:n, 2] = np.tile(np.arange(cols), rows)
    return pos


@lru_cache(maxsize=8)
def image_rope(rows: int, cols: int, caption_padded_len: int, cfg: ZImageConfig) -> tuple[mx.array, mx.array]:
    """RoPE tables of the image tokens; cached because every step of a generation uses the same ones."""
    return rope_tables(image_positions(rows, cols, caption_padded_len), cfg)


def padded(n: int) -> int:
    return n + (-n) % SEQ_MULTIPLE


def apply_rope(x: mx.array, cos: mx.array, sin: mx.array) -> mx.array:
    """Rotate interleaved pairs (x[2i], x[2i+1]) of x (B, L, H, D) in float32, as complex products."""
    b, length, h, d = x.shape
    pairs = x.astype(mx.float32).reshape(b, length, h, d // 2, 2)
    even, odd = pairs[..., 0], pairs[..., 1]
    cos, sin = cos[:, None, :], sin[:, None, :]
    out = mx.stack([even * cos - odd * sin, even * sin + odd * cos], axis=-1)
    return out.reshape(b, length, h, d).astype(x.dtype)


# ---------------------------------------------------------------------------------------------
# Building blocks


class Attention(nn.Module):
    def __init__(self, dim: int, n_heads: int):
        super().__init__()
        self.n_heads = n_heads
        head_dim = dim // n_heads
        self.scale = head_dim**-0.5
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(dim, dim, bias=False)
        self.to_v = nn.Linear(dim, dim, bias=False)
        self.to_out = [nn.Linear(dim, dim, bias=False)]
        self.norm_q = nn.RMSNorm(head_dim, eps=1e-5)
        self.norm_k = nn.RMSNorm(head_dim, eps=1e-5)

    def __call__(self, x: mx.array, cos: mx.array, sin: mx.array) -> mx.array:
        b, length, _ = x.shape
        q = apply_rope(self.norm_q(self.to_q(x).reshape(b, length, self.n_heads, -1)), cos, sin)
        k = apply_rope(self.norm_k(self.to_k(x).reshape(b, length, self.n_heads, -1)), cos, sin)
        v = self.to_v(x).reshape(b, length, self.n_heads, -1)
        q, k, v = (t.transpose(0, 2, 1, 3) for t in (q, k, v))
        out = mx.fast.scaled_dot_product_attention(q, k, v, scale=self.scale)
        return self.to_out[0](out.transpose(0, 2, 1, 3).reshape(b, length, -1))


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)
        self.w3 = nn.Linear(dim, hidden, bias=False)

    def __call__(self, x: mx.array) -> mx.array:
        return self.w2(nn.silu(self.w1(x)) * self.w3(x))


class TransformerBlock(nn.Module):
    """Pre- and post-normalised attention and SwiGLU, optionally modulated by the timestep (adaLN, tanh gates)."""

    def __init__(self, cfg: ZImageConfig, modulation: bool):
        super().__init__()
        dim = cfg.dim
        self.attention = Attention(dim, cfg.n_heads)
        self.feed_forward = FeedForward(dim, int(dim / 3 * 8))
        self.attention_norm1 = nn.RMSNorm(dim, eps=cfg.norm_eps)
        self.ffn_norm1 = nn.RMSNorm(dim, eps=cfg.norm_eps)
        self.attention_norm2 = nn.RMSNorm(dim, eps=cfg.norm_eps)
        self.ffn_norm2 = nn.RMSNorm(dim, eps=cfg.norm_eps)
        if modulation:
            self.adaLN_modulation = [nn.Linear(cfg.adaln_dim, 4 * dim)]

    def __call__(self, x: mx.array, cos: mx.array, sin: mx.array, adaln: mx.array | None = None) -> mx.array:
        if adaln is None:
            x = x + self.attention_norm2(self.attention(self.attention_norm1(x), cos, sin))
            return x + self.ffn_norm2(self.feed_forward(self.ffn_norm1(x)))
        scale_msa, gate_msa, scale_mlp, gate_mlp = mx.split(
            self.adaLN_modulation[0](adaln)[:, None, :], 4, axis=-1
        )
        attn = self.attention(self.attention_norm1(x) * (1.0 + scale_msa), cos, sin)
        x = x + mx.tanh(gate_msa) * self.attention_norm2(attn)
        ffn = self.feed_forward(self.ffn_norm1(x) * (1.0 + scale_mlp))
        return x + mx.tanh(gate_mlp) * self.ffn_norm2(ffn)


class FinalLayer(nn.Module):
    def __init__(self, dim: int, out_features: int, adaln_dim: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(dim, eps=1e-6, affine=False)
        self.linear = nn.Linear(dim, out_features)
        self.adaLN_modulation = [nn.SiLU(), nn.Linear(adaln_dim, dim)]

    def __call__(self, x: mx.array, adaln: mx.array) -> mx.array:
        scale = 1.0 + self.adaLN_modulation[1](nn.silu(adaln))
        return self.linear(self.norm_final(x) * scale[:, None, :])


class TimestepEmbedder(nn.Module):
    FREQ_DIM = 256

    def __init__(self, out_dim: int, mid_dim: int = 1024):
        super().__init__()
        self.mlp = [nn.Linear(self.FREQ_DIM, mid_dim), nn.SiLU(), nn.Linear(mid_dim, out_dim)]

    @classmethod
    def frequencies(cls, t: mx.array, max_period: float = 10000.0) -> mx.array:
        half = cls.FREQ_DIM // 2
        freqs = mx.exp(-math.log(max_period) * mx.arange(half, dtype=mx.float32) / half)
        args = t.astype(mx.float32)[:, None] * freqs[None]
        return mx.concatenate([mx.cos(args), mx.sin(args)], axis=-1)

    def __call__(self, t: mx.array, dtype: mx.Dtype) -> mx.array:
        x = self.frequencies(t).astype(dtype)
        return self.mlp[2](nn.silu(self.mlp[0](x)))


# ---------------------------------------------------------------------------------------------
# The model


@dataclass
class Caption:
    """The caption branch of one generation: refined tokens and their RoPE tables, step-independent."""

    tokens: mx.array  # (B, padded_len, dim)
    cos: mx.array
    sin: mx.array

    @property
    def padded_len(self) -> int:
        return self.tokens.shape[1]


class ZImageTransformer(nn.Module):
    def __init__(self, cfg: ZImageConfig):
        super().__init__()
        self.config = cfg
        patch_features = PATCH * PATCH * cfg.in_channels
        self.all_x_embedder = {"2-1": nn.Linear(patch_features, cfg.dim)}
        self.all_final_layer = {"2-1": FinalLayer(cfg.dim, patch_features, cfg.adaln_dim)}
        self.noise_refiner = [TransformerBlock(cfg, modulation=True) for _ in range(cfg.n_refiner_layers)]
        self.context_refiner = [TransformerBlock(cfg, modulation=False) for _ in range(cfg.n_refiner_layers)]
        self.t_embedder = TimestepEmbedder(cfg.adaln_dim)
        self.cap_embedder = [
            nn.RMSNorm(cfg.cap_feat_dim, eps=cfg.norm_eps),
            nn.Linear(cfg.cap_feat_dim, cfg.dim),
        ]
        self.x_pad_token = mx.zeros((1, cfg.dim))
        self.cap_pad_token = mx.zeros((1, cfg.dim))
        self.layers = [TransformerBlock(cfg, modulation=True) for _ in range(cfg.n_layers)]

    # -- caption branch (once per generation) --------------------------------------------------

    def encode_caption(self, features: mx.array, lengths: list[int]) -> Caption:
        """Embed and refine caption features (B, L, cap_feat_dim); tokens past each length become pads."""
        b, length, _ = features.shape
        total = padded(max(lengths))
        if total > length:
            features = mx.concatenate(
                [features, mx.zeros((b, total - length, features.shape[-1]), features.dtype)], 1
            )
        x = self.cap_embedder[1](self.cap_embedder[0](features))
        is_pad = mx.arange(total)[None, :, None] >= mx.array(lengths)[:, None, None]
        x = mx.where(is_pad, self.cap_pad_token.astype(x.dtype), x)
        cos, sin = rope_tables(caption_positions(total), self.config)
        for block in self.context_refiner:
            x = block(x, cos, sin)
        return Caption(x, cos, sin)

    # -- one denoising step --------------------------------------------------------------------

    def __call__(self, latents: mx.array, t: mx.array, caption: Caption) -> mx.array:
        """Velocity for latents (B, C, H, W) at model time t (B,), in diffusers' convention."""
        b, c, h, w = latents.shape
        rows, cols = h // PATCH, w // PATCH
        n = rows * cols
        adaln = self.t_embedder(t * self.config.t_scale, latents.dtype).astype(latents.dtype)

        patches = (
            latents.reshape(b, c, rows, PATCH, cols, PATCH).transpose(0, 2, 4, 3, 5, 1).reshape(b, n, -1)
        )
        x = self.all_x_embedder["2-1"](patches)
        total = padded(n)
        if total > n:
            x = mx.concatenate(
                [x, mx.broadcast_to(self.x_pad_token.astype(x.dtype), (b, total - n, x.shape[-1]))], 1
            )
        cos, sin = image_rope(rows, cols, caption.padded_len, self.config)
        for block in self.noise_refiner:
            x = block(x, cos, sin, adaln)

        x = mx.concatenate([x, caption.tokens.astype(x.dtype)], axis=1)
        cos, sin = mx.concatenate([cos, caption.cos]), mx.concatenate([sin, caption.sin])
        for block in self.layers:
            x = block(x, cos, sin, adaln)

        x = self.all_final_layer["2-1"](x[:, :n], adaln)
        return x.reshape(b, rows, cols, PATCH, PATCH, c).transpose(0, 5, 1, 3, 2, 4).reshape(b, c, h, w)
