"""Flux2Transformer2DModel in MLX: FLUX.2's MMDiT over text, image and reference-image tokens.

The layout follows diffusers 0.42 (attribute names are the checkpoint's). Tokens are packed latents
(one token per 2x2 latent patch, 128 features). `transformer_blocks` keep text and image tokens in two
streams with their own weights and attend jointly (text first); `single_transformer_blocks` then run
one stream, text first, with attention and feed-forward in parallel off one input projection. Every
block is modulated by the timestep alone (no pooled text), LayerNorm without affine, then
`(1 + scale) * x + shift`, and gated residuals. Positions are 4-D (t, h, w, l) with interleaved RoPE.

What makes it fast, without changing the arithmetic:
- the modulation depends only on the timestep, whose values are known before the first step:
  `modulations` computes every step's shifts, scales and gates at once, and each modulated norm is one
  `mx.fast.layer_norm` with weight `1 + scale` and bias `shift`;
- the text embedding, the reference images' tokens and the RoPE tables do not change between steps:
  `condition` computes them once per generation;
- after loading, the image and text q/k/v projections are fused into one matmul each, and the single
  blocks' joint projection is split into its attention and feed-forward parts so that each comes out
  contiguous (`fuse_projections`); q/k normalisation + RoPE + head layout and SwiGLU use Z-Image's
  CUDA kernels (plain MLX elsewhere).
"""

from __future__ import annotations

from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from ollama_img.models.evaluation import SUBMIT_EVERY, SUBMIT_MIN_TOKENS
from ollama_img.models.flux2.config import TIME_CHANNELS, Flux2Config
from ollama_img.models.loading import fuse_linears
from ollama_img.models.zimage.attention_prep import qk_norm_rope
from ollama_img.models.zimage.fused_ops import swiglu
from ollama_img.models.zimage.transformer import TimestepEmbedder

# ---------------------------------------------------------------------------------------------
# Positions and rotary tables


def text_ids(length: int) -> np.ndarray:
    """Text token k sits at (0, 0, 0, k)."""
    ids = np.zeros((length, 4), dtype=np.int64)
    ids[:, 3] = np.arange(length)
    return ids


def grid_ids(rows: int, cols: int, t: int = 0) -> np.ndarray:
    """Packed latent token (r, c) of a grid in raster order sits at (t, r, c, 0): t = 0 for the image being
    made, 10 + 10 * i for reference image i."""
    ids = np.zeros((rows * cols, 4), dtype=np.int64)
    ids[:, 0] = t
    ids[:, 1] = np.repeat(np.arange(rows), cols)
    ids[:, 2] = np.tile(np.arange(cols), rows)
    return ids


def reference_time(index: int) -> int:
    """The t coordinate of reference image `index` (diffusers' scale of 10)."""
    return 10 + 10 * index


def rope_tables(ids: np.ndarray, cfg: Flux2Config) -> tuple[mx.array, mx.array]:
    """cos and sin, (tokens, head_dim // 2) float32, one angle per rotated pair.

    As diffusers: per axis, frequencies theta^(-2i/d) and angles in float64, cos/sin rounded to float32.
    """
    angles = []
    for axis, d in enumerate(cfg.axes_dims_rope):
        freqs = 1.0 / (cfg.rope_theta ** (np.arange(0, d, 2, dtype=np.float64) / d))
        angles.append(np.outer(ids[:, axis].astype(np.float32).astype(np.float64), freqs))
    a = np.concatenate(angles, axis=1)
    return mx.array(np.cos(a).astype(np.float32)), mx.array(np.sin(a).astype(np.float32))


# ---------------------------------------------------------------------------------------------
# Building blocks


def split_linear(linear: nn.Module, sizes: tuple[int, ...]) -> list[nn.Module]:
    """A bias-free layer cut along its outputs into layers of `sizes` outputs (plain or quantized)."""
    bounds = np.cumsum((0, *sizes))
    parts = []
    for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
        if isinstance(linear, nn.QuantizedLinear):
            in_dims = linear.weight.shape[1] * 32 // linear.bits
            part = nn.QuantizedLinear(
                in_dims, 1, bias=False, group_size=linear.group_size, bits=linear.bits, mode=linear.mode
            )
            part.weight, part.scales = linear.weight[lo:hi], linear.scales[lo:hi]
            if linear.get("biases") is not None:
                part.biases = linear.biases[lo:hi]
        else:
            part = nn.Linear(1, 1, bias=False)
            part.weight = linear.weight[lo:hi]
        parts.append(part)
    return parts


def modulate(x: mx.array, weight: mx.array, shift: mx.array, eps: float) -> mx.array:
    """LayerNorm without affine, then `weight * x + shift` (weight = 1 + scale), as one fused op."""
    return mx.fast.layer_norm(x, weight, shift, eps)


class FeedForward(nn.Module):
    """SwiGLU: one input projection to [gate | up], then the output projection."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.hidden = hidden
        self.linear_in = nn.Linear(dim, 2 * hidden, bias=False)
        self.linear_out = nn.Linear(hidden, dim, bias=False)

    def __call__(self, x: mx.array) -> mx.array:
        return self.linear_out(swiglu(self.linear_in(x), self.hidden))


class JointAttention(nn.Module):
    """Attention over [text; image] with separate projections and q/k norms for each stream."""

    def __init__(self, cfg: Flux2Config):
        super().__init__()
        dim, hd = cfg.dim, cfg.attention_head_dim
        self.n_heads, self.eps, self.scale = cfg.num_attention_heads, cfg.eps, hd**-0.5
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(dim, dim, bias=False)
        self.to_v = nn.Linear(dim, dim, bias=False)
        self.to_out = [nn.Linear(dim, dim, bias=False)]
        self.norm_q = nn.RMSNorm(hd, eps=cfg.eps)
        self.norm_k = nn.RMSNorm(hd, eps=cfg.eps)
        self.add_q_proj = nn.Linear(dim, dim, bias=False)
        self.add_k_proj = nn.Linear(dim, dim, bias=False)
        self.add_v_proj = nn.Linear(dim, dim, bias=False)
        self.to_add_out = nn.Linear(dim, dim, bias=False)
        self.norm_added_q = nn.RMSNorm(hd, eps=cfg.eps)
        self.norm_added_k = nn.RMSNorm(hd, eps=cfg.eps)

    def fuse(self):
        self.to_qkv = fuse_linears([self.to_q, self.to_k, self.to_v])
        self.add_qkv = fuse_linears([self.add_q_proj, self.add_k_proj, self.add_v_proj])
        del self.to_q, self.to_k, self.to_v, self.add_q_proj, self.add_k_proj, self.add_v_proj

    def _qkv(self, x, fused: str, parts: tuple[str, str, str]) -> mx.array:
        if fused in self:
            return self[fused](x)
        return mx.concatenate([self[p](x) for p in parts], axis=-1)

    def __call__(self, img: mx.array, txt: mx.array, rope: Rope) -> tuple[mx.array, mx.array]:
        q_i, k_i, v_i = qk_norm_rope(
            self._qkv(img, "to_qkv", ("to_q", "to_k", "to_v")),
            self.norm_q.weight,
            self.norm_k.weight,
            rope.img_cos,
            rope.img_sin,
            self.n_heads,
            self.eps,
        )
        q_t, k_t, v_t = qk_norm_rope(
            self._qkv(txt, "add_qkv", ("add_q_proj", "add_k_proj", "add_v_proj")),
            self.norm_added_q.weight,
            self.norm_added_k.weight,
            rope.txt_cos,
            rope.txt_sin,
            self.n_heads,
            self.eps,
        )
        q, k, v = (mx.concatenate(pair, axis=2) for pair in ((q_t, q_i), (k_t, k_i), (v_t, v_i)))
        out = mx.fast.scaled_dot_product_attention(q, k, v, scale=self.scale)
        b, _, length, _ = out.shape
        out = out.transpose(0, 2, 1, 3).reshape(b, length, -1)
        t = txt.shape[1]
        return self.to_out[0](out[:, t:]), self.to_add_out(out[:, :t])


class Flux2TransformerBlock(nn.Module):
    """A double-stream block: text and image keep their own weights and share one attention."""

    def __init__(self, cfg: Flux2Config):
        super().__init__()
        self.eps = cfg.eps
        self.attn = JointAttention(cfg)
        self.ff = FeedForward(cfg.dim, cfg.mlp_hidden)
        self.ff_context = FeedForward(cfg.dim, cfg.mlp_hidden)

    def __call__(self, img, txt, mod_img: mx.array, mod_txt: mx.array, rope: Rope):
        """`mod_img`, `mod_txt` (6, dim): 1 + scale, shift, gate of attention, then of the feed-forward."""
        attn_img, attn_txt = self.attn(
            modulate(img, mod_img[0], mod_img[1], self.eps),
            modulate(txt, mod_txt[0], mod_txt[1], self.eps),
            rope,
        )
        img = img + mod_img[2] * attn_img
        img = img + mod_img[5] * self.ff(modulate(img, mod_img[3], mod_img[4], self.eps))
        txt = txt + mod_txt[2] * attn_txt
        txt = txt + mod_txt[5] * self.ff_context(modulate(txt, mod_txt[3], mod_txt[4], self.eps))
        return img, txt


class ParallelSelfAttention(nn.Module):
    """Attention and SwiGLU side by side: one projection in ([q|k|v|gate|up]), one out of [attn|mlp]."""

    def __init__(self, cfg: Flux2Config):
        super().__init__()
        dim, hd = cfg.dim, cfg.attention_head_dim
        self.n_heads, self.eps, self.scale = cfg.num_attention_heads, cfg.eps, hd**-0.5
        self.dim, self.mlp_hidden = dim, cfg.mlp_hidden
        self.to_qkv_mlp_proj = nn.Linear(dim, 3 * dim + 2 * self.mlp_hidden, bias=False)
        self.to_out = nn.Linear(dim + self.mlp_hidden, dim, bias=False)
        self.norm_q = nn.RMSNorm(hd, eps=cfg.eps)
        self.norm_k = nn.RMSNorm(hd, eps=cfg.eps)

    def fuse(self):
        self.to_qkv, self.to_mlp = split_linear(self.to_qkv_mlp_proj, (3 * self.dim, 2 * self.mlp_hidden))
        del self.to_qkv_mlp_proj

    def __call__(self, x: mx.array, cos: mx.array, sin: mx.array) -> mx.array:
        if "to_qkv" in self:
            qkv, gate_up = self.to_qkv(x), self.to_mlp(x)
        else:
            qkv, gate_up = mx.split(self.to_qkv_mlp_proj(x), [3 * self.dim], axis=-1)
        q, k, v = qk_norm_rope(qkv, self.norm_q.weight, self.norm_k.weight, cos, sin, self.n_heads, self.eps)
        out = mx.fast.scaled_dot_product_attention(q, k, v, scale=self.scale)
        b, _, length, _ = out.shape
        out = out.transpose(0, 2, 1, 3).reshape(b, length, -1)
        return self.to_out(mx.concatenate([out, swiglu(gate_up, self.mlp_hidden)], axis=-1))


class Flux2SingleTransformerBlock(nn.Module):
    def __init__(self, cfg: Flux2Config):
        super().__init__()
        self.eps = cfg.eps
        self.attn = ParallelSelfAttention(cfg)

    def __call__(self, x: mx.array, mod: mx.array, cos: mx.array, sin: mx.array) -> mx.array:
        """`mod` (3, dim): 1 + scale, shift, gate."""
        return x + mod[2] * self.attn(modulate(x, mod[0], mod[1], self.eps), cos, sin)


class TimestepEmbedding(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.linear_1 = nn.Linear(TIME_CHANNELS, dim, bias=False)
        self.linear_2 = nn.Linear(dim, dim, bias=False)

    def __call__(self, x: mx.array) -> mx.array:
        return self.linear_2(nn.silu(self.linear_1(x)))


class TimeGuidanceEmbed(nn.Module):
    def __init__(self, cfg: Flux2Config):
        super().__init__()
        self.timestep_embedder = TimestepEmbedding(cfg.dim)
        if cfg.guidance_embeds:  # FLUX.2 [dev]'s; Flux2KleinPipeline never passes a guidance value
            self.guidance_embedder = TimestepEmbedding(cfg.dim)

    def __call__(self, t: mx.array, dtype: mx.Dtype) -> mx.array:
        # Z-Image's sinusoidal timestep features are FLUX.2's (TIME_CHANNELS of them, cosines first)
        return self.timestep_embedder(TimestepEmbedder.frequencies(t).astype(dtype))


class Modulation(nn.Module):
    """silu(temb) -> `sets` triples of (shift, scale, gate)."""

    def __init__(self, dim: int, sets: int):
        super().__init__()
        self.linear = nn.Linear(dim, 3 * sets * dim, bias=False)

    def __call__(self, temb: mx.array) -> mx.array:
        """(S, 3 * sets, dim) with each triple reordered to (1 + scale, shift, gate)."""
        s, dim = temb.shape
        m = self.linear(nn.silu(temb)).reshape(s, -1, 3, dim)
        shift, scale, gate = m[:, :, 0], m[:, :, 1], m[:, :, 2]
        return mx.stack([1.0 + scale, shift, gate], axis=2).reshape(s, -1, dim)


class NormOut(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.linear = nn.Linear(dim, 2 * dim, bias=False)

    def __call__(self, temb: mx.array) -> mx.array:
        """(S, 2, dim): 1 + scale, shift."""
        scale, shift = mx.split(self.linear(nn.silu(temb)), 2, axis=-1)
        return mx.stack([1.0 + scale, shift], axis=1)


# ---------------------------------------------------------------------------------------------
# The model


@dataclass
class Rope:
    """RoPE tables of one generation: text, image (+ reference) and both, each contiguous."""

    txt_cos: mx.array
    txt_sin: mx.array
    img_cos: mx.array
    img_sin: mx.array
    cos: mx.array
    sin: mx.array

    @classmethod
    def from_ids(cls, txt: np.ndarray, img: np.ndarray, cfg: Flux2Config) -> Rope:
        tc, ts = rope_tables(txt, cfg)
        ic, isn = rope_tables(img, cfg)
        return cls(tc, ts, ic, isn, mx.concatenate([tc, ic]), mx.concatenate([ts, isn]))


@dataclass
class Condition:
    """What the steps of one generation share: the embedded text, reference tokens and RoPE tables."""

    context: mx.array  # (B, T, dim)
    reference: mx.array | None  # (B, R, dim), after x_embedder
    rope: Rope


@dataclass
class StepModulation:
    """One step's modulation (from `modulations`): double blocks' image and text, single blocks', final."""

    img: mx.array  # (6, dim)
    txt: mx.array  # (6, dim)
    single: mx.array  # (3, dim)
    final: mx.array  # (2, dim)


class Flux2Transformer(nn.Module):
    def __init__(self, cfg: Flux2Config):
        super().__init__()
        self.config = cfg
        dim = cfg.dim
        self.time_guidance_embed = TimeGuidanceEmbed(cfg)
        self.double_stream_modulation_img = Modulation(dim, 2)
        self.double_stream_modulation_txt = Modulation(dim, 2)
        self.single_stream_modulation = Modulation(dim, 1)
        self.x_embedder = nn.Linear(cfg.in_channels, dim, bias=False)
        self.context_embedder = nn.Linear(cfg.joint_attention_dim, dim, bias=False)
        self.transformer_blocks = [Flux2TransformerBlock(cfg) for _ in range(cfg.num_layers)]
        self.single_transformer_blocks = [
            Flux2SingleTransformerBlock(cfg) for _ in range(cfg.num_single_layers)
        ]
        self.norm_out = NormOut(dim)
        self.proj_out = nn.Linear(dim, cfg.output_channels, bias=False)

    def fuse_units(self) -> list[tuple[str, nn.Module]]:
        """The attention layers whose projections merge (double blocks) or split (single blocks), by
        parameter prefix: the loader fuses each as soon as its weights are in (`loading.FuseUnit`)."""
        double = [(f"transformer_blocks.{i}.attn", b.attn) for i, b in enumerate(self.transformer_blocks)]
        single = [
            (f"single_transformer_blocks.{i}.attn", b.attn)
            for i, b in enumerate(self.single_transformer_blocks)
        ]
        return double + single

    def fuse_projections(self):
        for _, attention in self.fuse_units():
            attention.fuse()

    # -- step-independent parts ----------------------------------------------------------------

    def modulations(self, t: mx.array, dtype: mx.Dtype) -> list[StepModulation]:
        """Every step's modulation for model times t (S,) (sigma * 1000), computed at once."""
        temb = self.time_guidance_embed(t, dtype)
        img = self.double_stream_modulation_img(temb)
        txt = self.double_stream_modulation_txt(temb)
        single = self.single_stream_modulation(temb)
        final = self.norm_out(temb)
        mx.eval(img, txt, single, final)
        return [StepModulation(img[i], txt[i], single[i], final[i]) for i in range(t.shape[0])]

    def condition(
        self,
        prompt_embeds: mx.array,
        rows: int,
        cols: int,
        reference: list[tuple[mx.array, int, int]] = (),
    ) -> Condition:
        """Embedded text (B, T, joint_dim) and reference tokens [(tokens (B, n, C), rows, cols)], RoPE for
        an image of rows x cols packed tokens followed by the references."""
        context = self.context_embedder(prompt_embeds)
        ids = [grid_ids(rows, cols)] + [
            grid_ids(r, c, reference_time(i)) for i, (_, r, c) in enumerate(reference)
        ]
        ref = None
        if reference:
            ref = self.x_embedder(mx.concatenate([tokens for tokens, _, _ in reference], axis=1))
        rope = Rope.from_ids(text_ids(prompt_embeds.shape[1]), np.concatenate(ids), self.config)
        mx.eval([a for a in (context, ref, rope.cos, rope.sin) if a is not None])
        return Condition(context, ref, rope)

    # -- one step ------------------------------------------------------------------------------

    def step(self, latents: mx.array, cond: Condition, mod: StepModulation, submit: bool = True) -> mx.array:
        """Velocity (B, N, out) for packed latents (B, N, in_channels).

        With `submit`, a GPU evaluates every SUBMIT_EVERY single blocks on long sequences (as Z-Image: a
        block's temporaries are freed only once the device is done with them).
        """
        b, n, _ = latents.shape
        img = self.x_embedder(latents)
        if cond.reference is not None:
            ref = cond.reference
            img = mx.concatenate(
                [img, ref if ref.shape[0] == b else mx.broadcast_to(ref, (b, *ref.shape[1:]))], 1
            )
        txt = cond.context
        if txt.shape[0] != b:
            txt = mx.broadcast_to(txt, (b, *txt.shape[1:]))
        for block in self.transformer_blocks:
            img, txt = block(img, txt, mod.img, mod.txt, cond.rope)
        t = txt.shape[1]
        x = mx.concatenate([txt, img], axis=1)
        submit = submit and mx.default_device() == mx.gpu and b * x.shape[1] >= SUBMIT_MIN_TOKENS
        for i, block in enumerate(self.single_transformer_blocks):
            x = block(x, mod.single, cond.rope.cos, cond.rope.sin)
            if submit and (i + 1) % SUBMIT_EVERY == 0:
                mx.eval(x)
        x = x[:, t : t + n]
        return self.proj_out(modulate(x, mod.final[0], mod.final[1], self.config.eps))

    def __call__(
        self,
        hidden_states: mx.array,
        encoder_hidden_states: mx.array,
        timestep: mx.array,
        img_ids: np.ndarray,
        txt_ids: np.ndarray,
    ) -> mx.array:
        """diffusers' forward: packed tokens (B, N, C), text (B, T, joint_dim), timestep (1,) as the pipeline
        passes it (sigma), integer ids (N, 4) and (T, 4); every image token is in the output."""
        dtype = hidden_states.dtype
        t = (timestep.astype(mx.float32) * 1000).astype(mx.float32)
        mod = self.modulations(t, dtype)[0]
        cond = Condition(
            self.context_embedder(encoder_hidden_states), None, Rope.from_ids(txt_ids, img_ids, self.config)
        )
        return self.step(hidden_states, cond, mod)
