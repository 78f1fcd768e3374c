"""ZImageTransformer2DModel in MLX: a single-stream DiT over image and caption tokens.

The layout follows diffusers 0.42 (attribute names are the checkpoint's): the image latents are cut
into 2x2 patches and refined by `noise_refiner` blocks (timestep-modulated), the caption embedding by
`context_refiner` blocks (not modulated), then image and caption tokens go through `layers` as one
sequence, image first. Each part is padded to a multiple of 32 tokens with a learned pad token.
Positions are 3-D (caption index, row, column) and rotate query/key pairs with RoPE.

What makes it fast, without changing the arithmetic:
- the caption branch does not depend on the timestep: `encode_caption` runs once per generation;
- adaLN depends only on the timestep, whose values are known before the first step: `modulations`
  computes every block's scales and gates for all steps at once, folded into the RMSNorm weights
  (norm(x) * (1 + s) == rms_norm(x, w * (1 + s)) and tanh(g) * norm(y) == rms_norm(y, w * tanh(g)));
- after loading, q/k/v and the two SwiGLU input projections are fused into single matmuls
  (`fuse_projections`); on CUDA, q/k normalisation + RoPE + head transposes, each residual update +
  the next norm, and SwiGLU are single kernels (`attention_prep`, `fused_ops`);
- a step is three compiled functions (before, through and after the main stack), the middle one
  separable so that TeaCache can skip it.
"""

import math
from dataclasses import dataclass
from functools import lru_cache

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from ollama_img.memory.plan import Evaluation
from ollama_img.models.evaluation import Chunks
from ollama_img.models.loading import fuse_linears
from ollama_img.models.zimage.attention_prep import qk_norm_rope
from ollama_img.models.zimage.config import PATCH, SEQ_MULTIPLE, ZImageConfig
from ollama_img.models.zimage.fused_ops import add_norm, swiglu

QK_EPS = 1e-5


# ---------------------------------------------------------------------------------------------
# Positions and rotary tables


def padded(n: int) -> int:
    return n + (-n) % SEQ_MULTIPLE


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


def rope_tables(positions: np.ndarray, cfg: ZImageConfig) -> tuple[mx.array, mx.array]:
    """cos and sin, (tokens, head_dim // 2) float32, for integer positions (tokens, 3).

    Angles are formed in float64 and rounded to float32 as diffusers does, before cos/sin.
    """
    angles = []
    for axis, d in enumerate(cfg.axes_dims):
        freqs = 1.0 / (cfg.rope_theta ** (np.arange(0, d, 2, dtype=np.float64) / d))
        angles.append(np.outer(positions[:, axis].astype(np.float64), freqs).astype(np.float32))
    a = np.concatenate(angles, axis=1).astype(np.float64)
    return mx.array(np.cos(a).astype(np.float32)), mx.array(np.sin(a).astype(np.float32))


@lru_cache(maxsize=8)
def image_rope(rows: int, cols: int, caption_padded_len: int, cfg: ZImageConfig) -> tuple[mx.array, mx.array]:
    """RoPE tables of the image tokens; cached because every step of a generation uses the same ones."""
    return rope_tables(image_positions(rows, cols, caption_padded_len), cfg)


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
        self.norm_q = nn.RMSNorm(head_dim, eps=QK_EPS)
        self.norm_k = nn.RMSNorm(head_dim, eps=QK_EPS)

    def fuse(self):
        self.to_qkv = fuse_linears([self.to_q, self.to_k, self.to_v])
        del self.to_q, self.to_k, self.to_v

    def qkv(self, x: mx.array) -> mx.array:
        if "to_qkv" in self:
            return self.to_qkv(x)
        return mx.concatenate([self.to_q(x), self.to_k(x), self.to_v(x)], axis=-1)

    def __call__(self, x: mx.array, cos: mx.array, sin: mx.array) -> mx.array:
        b, length, dim = x.shape
        q, k, v = qk_norm_rope(
            self.qkv(x), self.norm_q.weight, self.norm_k.weight, cos, sin, self.n_heads, QK_EPS
        )
        out = mx.fast.scaled_dot_product_attention(q, k, v, scale=self.scale)
        return self.to_out[0](out.transpose(0, 2, 1, 3).reshape(b, length, dim))


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.hidden = hidden
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)
        self.w3 = nn.Linear(dim, hidden, bias=False)

    def fuse(self):
        self.w13 = fuse_linears([self.w1, self.w3])
        del self.w1, self.w3

    def __call__(self, x: mx.array) -> mx.array:
        if "w13" in self:
            return self.w2(swiglu(self.w13(x), self.hidden))
        return self.w2(nn.silu(self.w1(x)) * self.w3(x))


class TransformerBlock(nn.Module):
    """Pre- and post-normalised attention and SwiGLU, optionally modulated by the timestep (adaLN, tanh gates)."""

    def __init__(self, cfg: ZImageConfig, modulation: bool):
        super().__init__()
        dim = cfg.dim
        self.eps = cfg.norm_eps
        self.attention = Attention(dim, cfg.n_heads)
        self.feed_forward = FeedForward(dim, int(dim / 3 * 8))
        self.attention_norm1 = nn.RMSNorm(dim, eps=cfg.norm_eps)
        self.ffn_norm1 = nn.RMSNorm(dim, eps=cfg.norm_eps)
        self.attention_norm2 = nn.RMSNorm(dim, eps=cfg.norm_eps)
        self.ffn_norm2 = nn.RMSNorm(dim, eps=cfg.norm_eps)
        if modulation:
            self.adaLN_modulation = [nn.Linear(cfg.adaln_dim, 4 * dim)]

    def norm_weights(self, adaln: mx.array | None = None) -> mx.array:
        """The four RMSNorm weights, (S, 4, dim), with the timestep's scales and gates folded in.

        Without modulation they are the plain norm weights, (1, 4, dim).
        """
        plain = mx.stack(
            [
                self.attention_norm1.weight,
                self.attention_norm2.weight,
                self.ffn_norm1.weight,
                self.ffn_norm2.weight,
            ]
        )[None]
        if adaln is None:
            return plain
        scale_msa, gate_msa, scale_mlp, gate_mlp = mx.split(self.adaLN_modulation[0](adaln), 4, axis=-1)
        factors = mx.stack([1.0 + scale_msa, mx.tanh(gate_msa), 1.0 + scale_mlp, mx.tanh(gate_mlp)], axis=1)
        return (plain * factors).astype(adaln.dtype)

    def fuse(self):
        self.attention.fuse()
        self.feed_forward.fuse()

    def forward(self, x, h, cos, sin, weights: mx.array, next_weight: mx.array | None):
        """One block given h = its normalised input; returns x and the next block's normalised input.

        `weights` (4, dim) from `norm_weights` for this step; `next_weight` is the next block's first
        norm weight (None for the last block), so that the residual update and the next norm fuse.
        """
        attn = self.attention(h, cos, sin)
        x, h = add_norm(x, attn, weights[1], weights[2], self.eps)
        return add_norm(x, self.feed_forward(h), weights[3], next_weight, self.eps)

    def __call__(self, x: mx.array, cos: mx.array, sin: mx.array, weights: mx.array) -> mx.array:
        return self.forward(x, mx.fast.rms_norm(x, weights[0], self.eps), cos, sin, weights, None)[0]


def run_blocks(blocks: list[TransformerBlock], x, cos, sin, weights, evaluation: Evaluation | None = None):
    """A chain of blocks, each block's last residual update fused with the next block's first norm.

    `evaluation` (the memory plan's; not inside mx.compile) evaluates the chain a chunk of blocks at a
    time, so that only a few blocks' temporaries are alive; None builds it as one graph. The last chunk
    is evaluated too: left lazy, it would run in one graph with whatever follows (the noise refiner's
    last block with the main stack's first chunk; on CUDA every output of a graph stays allocated until
    the kernels of its batch finish, so a chunk that merges three blocks holds three blocks' outputs).
    """
    chunks = Chunks(evaluation)
    h = mx.fast.rms_norm(x, weights[0][0], blocks[0].eps)
    for i, block in enumerate(blocks):
        next_weight = weights[i + 1][0] if i + 1 < len(blocks) else None
        x, h = block.forward(x, h, cos, sin, weights[i], next_weight)
        chunks.after(i, x, h, last=next_weight is None)
    return x


class FinalLayer(nn.Module):
    def __init__(self, dim: int, out_features: int, adaln_dim: int):
        super().__init__()
        self.linear = nn.Linear(dim, out_features)
        self.adaLN_modulation = [nn.SiLU(), nn.Linear(adaln_dim, dim)]

    def scale(self, adaln: mx.array) -> mx.array:
        """(S, dim): 1 + the timestep's scale, the weight of the final (otherwise affine-free) LayerNorm."""
        return 1.0 + self.adaLN_modulation[1](nn.silu(adaln))

    def __call__(self, x: mx.array, scale: mx.array) -> mx.array:
        return self.linear(mx.fast.layer_norm(x, scale, None, 1e-6))


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
        return self.mlp[2](nn.silu(self.mlp[0](x))).astype(dtype)


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


@dataclass
class Modulation:
    """Everything a step needs from its timestep: folded norm weights of each modulated block, final scale."""

    refiner: mx.array  # (n_refiner_layers, 4, dim)
    layers: mx.array  # (n_layers, 4, dim)
    final: mx.array  # (dim,)


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
        self._compiled = None

    def fuse_units(self) -> list[tuple[str, nn.Module]]:
        """The blocks whose q/k/v and SwiGLU input projections merge into single matmuls, by parameter
        prefix: the loader fuses each as soon as its weights are in (`loading.FuseUnit`)."""
        groups = (("noise_refiner", self.noise_refiner), ("context_refiner", self.context_refiner))
        return [
            (f"{name}.{i}", b)
            for name, blocks in (*groups, ("layers", self.layers))
            for i, b in enumerate(blocks)
        ]

    def fuse_projections(self):
        """Merge the projections of every block (after loading weights), one block at a time: only one
        block's weights are held twice while their fused copies are written."""
        for _, block in self.fuse_units():
            block.fuse()
            mx.eval(block.parameters())

    # -- per generation ------------------------------------------------------------------------

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
        x = run_blocks(self.context_refiner, x, cos, sin, [b.norm_weights()[0] for b in self.context_refiner])
        return Caption(x, cos, sin)

    def modulations(self, t: mx.array, dtype: mx.Dtype) -> list[Modulation]:
        """Modulation for each model time in t (S,), computed for all of them at once."""
        adaln = self.t_embedder(t * self.config.t_scale, dtype)
        refiner = mx.stack([b.norm_weights(adaln) for b in self.noise_refiner], axis=1)
        layers = mx.stack([b.norm_weights(adaln) for b in self.layers], axis=1)
        final = self.all_final_layer["2-1"].scale(adaln).astype(dtype)
        return [Modulation(refiner[i], layers[i], final[i]) for i in range(t.shape[0])]

    # -- one denoising step, in three parts ----------------------------------------------------

    def embed_image(
        self, latents: mx.array, caption: Caption, mod: Modulation, evaluation: Evaluation | None = None
    ):
        """Patchify, embed, noise-refine (its blocks evaluated as `run_blocks` says), and join with the
        caption: the main stack's input and tables."""
        b, c, h, w = latents.shape
        rows, cols = h // PATCH, w // PATCH
        n = rows * cols
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
        x = run_blocks(self.noise_refiner, x, cos, sin, mod.refiner, evaluation)
        tokens = caption.tokens.astype(x.dtype)
        if tokens.shape[0] != b:
            tokens = mx.broadcast_to(tokens, (b, *tokens.shape[1:]))
        x = mx.concatenate([x, tokens], axis=1)
        return x, mx.concatenate([cos, caption.cos]), mx.concatenate([sin, caption.sin])

    def main_stack(
        self, x: mx.array, cos: mx.array, sin: mx.array, mod: Modulation, evaluation: Evaluation | None = None
    ):
        return run_blocks(self.layers, x, cos, sin, mod.layers, evaluation)

    def unembed(self, x: mx.array, shape: tuple[int, ...], mod: Modulation) -> mx.array:
        """Final layer and unpatchify: tokens -> velocity (B, C, H, W)."""
        b, c, h, w = shape
        rows, cols = h // PATCH, w // PATCH
        x = self.all_final_layer["2-1"](x[:, : rows * cols], mod.final)
        return x.reshape(b, rows, cols, PATCH, PATCH, c).transpose(0, 5, 1, 3, 2, 4).reshape(b, c, h, w)

    def step(self, latents: mx.array, caption: Caption, mod: Modulation) -> mx.array:
        x, cos, sin = self.embed_image(latents, caption, mod)
        return self.unembed(self.main_stack(x, cos, sin, mod), latents.shape, mod)

    def __call__(self, latents: mx.array, t: mx.array, caption: Caption) -> mx.array:
        """Velocity for latents (B, C, H, W) at model time t (1,), in diffusers' convention."""
        return self.step(latents, caption, self.modulations(t, latents.dtype)[0])

    # -- compiled parts ------------------------------------------------------------------------

    @property
    def compiled(self) -> "CompiledSteps":
        if self._compiled is None:
            self._compiled = CompiledSteps(self)
        return self._compiled


class CompiledSteps:
    """The step parts, mx.compile'd: the same interface as the model's (compile retraces per new shape)."""

    def __init__(self, model: ZImageTransformer):
        def embed(latents, tokens, cap_cos, cap_sin, refiner):
            return model.embed_image(
                latents, Caption(tokens, cap_cos, cap_sin), Modulation(refiner, None, None)
            )

        def main(x, cos, sin, layers):
            return model.main_stack(x, cos, sin, Modulation(None, layers, None))

        self._model = model
        self._embed, self._main = mx.compile(embed), mx.compile(main)
        self._unembed = {}  # one compiled function per output shape: shapes are not arrays

    def embed_image(self, latents: mx.array, caption: Caption, mod: Modulation):
        return self._embed(latents, caption.tokens, caption.cos, caption.sin, mod.refiner)

    def main_stack(self, x: mx.array, cos: mx.array, sin: mx.array, mod: Modulation) -> mx.array:
        return self._main(x, cos, sin, mod.layers)

    def unembed(self, x: mx.array, shape: tuple[int, ...], mod: Modulation) -> mx.array:
        shape = tuple(shape)
        if shape not in self._unembed:
            model = self._model
            self._unembed[shape] = mx.compile(
                lambda x, final: model.unembed(x, shape, Modulation(None, None, final))
            )
        return self._unembed[shape](x, mod.final)

    def step(self, latents: mx.array, caption: Caption, mod: Modulation) -> mx.array:
        x, cos, sin = self.embed_image(latents, caption, mod)
        return self.unembed(self.main_stack(x, cos, sin, mod), latents.shape, mod)
