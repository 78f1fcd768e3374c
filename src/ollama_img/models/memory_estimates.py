"""Working-set estimates of the parts families share, for their memory profiles (plain Python, no MLX).

Each counts the arrays a part writes, from its config, as `memory.profile.BlockStack`s (per token) or
bytes (the VAE). The decoder's figures are anchored on what was measured on an H100 at 1024x1024
(bench/RESULTS.md, "What ships, and what it costs in memory"): about 2 GB above the weights when
decoded block by block, 12 GB as one compiled graph.
"""

from __future__ import annotations

from ollama_img.memory.profile import BlockStack
from ollama_img.models.configs import AutoencoderKLConfig, Qwen3Config

# MLX forms at most this many attention scores at a time in the VAE's attention (its head is as wide as
# the block, beyond what the fused kernels take, so the score matrix is materialised in chunks of queries).
VAE_MAX_SCORES = 2**28


def qwen3_layers(cfg: Qwen3Config, layers: int) -> BlockStack:
    """The decoder layers of a Qwen3 text encoder (the first `layers` of them run)."""
    h, q, kv, inner = (
        cfg.hidden_size,
        cfg.num_attention_heads * cfg.head_dim,
        cfg.num_key_value_heads * cfg.head_dim,
        cfg.intermediate_size,
    )
    # norms, o_proj, residual adds, down_proj: 6 x h; q, its norm, RoPE, attention output and its
    # layout: 5 x q; k and v with k's norm and RoPE: 4 x kv; gate, up, SiLU, product: 4 x inner.
    outputs = 6 * h + 5 * q + 4 * kv + 4 * inner
    weights = h * (2 * q + 2 * kv) + 3 * h * inner
    return BlockStack(
        blocks=layers,
        outputs_per_token=outputs,
        live_per_token=2 * h,
        weights=weights,
        heads=cfg.num_attention_heads,
    )


def dit_blocks(dim: int, hidden: int, heads: int, head_dim: int, blocks: int) -> BlockStack:
    """Single-stream DiT blocks with fused q/k/v and SwiGLU input projections (Z-Image's layout)."""
    # q/k/v (3), their normalised, rotated layout (3), attention output and its layout (2), output
    # projection (1), two residual+norm pairs (4), then w1/w3 (2 x hidden), SwiGLU (hidden), w2 (1); one
    # more for what the step keeps beside (latents, velocity, modulation), so that the estimate covers
    # the 4.3 GB measured above the weights with an evaluation every 6 blocks at 1024x1024.
    outputs = 15 * dim + 3 * hidden
    live = 2 * dim + 2 * head_dim  # the stream and its norm; cos and sin in float32
    weights = 4 * dim * dim + 3 * dim * hidden
    return BlockStack(
        blocks=blocks, outputs_per_token=outputs, live_per_token=live, weights=weights, heads=heads
    )


# The CPU unfolds a 3x3 convolution's (padded) input 9 times over and multiplies: measured on the tiny
# VAE, a resnet's two convolutions peak at about 32 input maps. Large inputs go in strips of
# `autoencoder_kl.Conv2d.SCRATCH_BYTES` (peak about twice that).
CONV_SCRATCH_BYTES = 2 * 128 * 2**20
CONV_SCRATCH_MAPS = 16


def autoencoder_decode_bytes(
    cfg: AutoencoderKLConfig, width: int, height: int, itemsize: int, mode: str, unfolded: bool = False
) -> int:
    """Bytes an AutoencoderKL decode holds beyond its weights, by how it is evaluated: `layers` (after each
    resnet, attention and upsampler), `blocks` (after each up block) or `whole` (one graph). `unfolded`:
    the device forms each convolution's unfolded patches (the CPU)."""
    peaks, outputs = _decoder_layers(cfg, width, height, unfolded, itemsize)
    layer = max(peaks) + max(outputs)  # the layer running and the previous output being freed
    factor = {"layers": 1.0, "blocks": 1.25, "whole": 6.0}[mode]  # anchored on the H100 measurements
    return int(factor * layer * itemsize)


def _decoder_layers(
    cfg: AutoencoderKLConfig, width: int, height: int, unfolded: bool, itemsize: int
) -> tuple[list[int], list[int]]:
    """(peak elements, output elements) of each decoder layer, in order."""
    peaks, outputs = [], []
    scratch_cap = CONV_SCRATCH_BYTES // itemsize

    def scratch(c: int, n: int) -> int:
        return min(CONV_SCRATCH_MAPS * c * n, scratch_cap) if unfolded else 0

    ch = list(cfg.block_out_channels)
    side = 2 ** (len(ch) - 1)
    n = (height // side) * (width // side)  # positions at the latent resolution

    def resnet(cin: int, cout: int, n: int):
        # the input (kept for the residual), a normalised copy and its activation of the wider width,
        # the output
        peaks.append(n * (cin + 2 * max(cin, cout) + cout) + 2 * scratch(max(cin, cout), n))
        outputs.append(n * cout)

    def upsample(c: int, n: int):
        peaks.append(n * c * 9 + scratch(c, 4 * n))  # input, its 4x nearest-neighbour copy, the output
        outputs.append(4 * n * c)

    def attention(c: int, n: int):
        scores = 2 * min(n * n, VAE_MAX_SCORES)  # the score matrix (a chunk of it) and its softmax
        peaks.append(6 * n * c + scores)
        outputs.append(n * c)

    top = ch[-1]
    peaks.append(n * (cfg.latent_channels + top))
    outputs.append(n * top)
    resnet(top, top, n)
    if cfg.mid_block_add_attention:
        attention(top, n)
    resnet(top, top, n)
    cin = top
    for i, c in enumerate(reversed(ch)):
        for _ in range(cfg.layers_per_block + 1):
            resnet(cin, c, n)
            cin = c
        if i < len(ch) - 1:
            upsample(c, n)
            n *= 4
    peaks.append(n * (4 * ch[0] + cfg.out_channels) + scratch(ch[0], n))  # final norm, activation, conv
    outputs.append(n * cfg.out_channels)
    return peaks, outputs
