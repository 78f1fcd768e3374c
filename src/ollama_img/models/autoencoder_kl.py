"""diffusers' AutoencoderKL in MLX, channels-last: its building blocks (shared by the VAEs of that
style) and the model itself (the Flux VAE configuration of Z-Image).

Names follow the diffusers checkpoint (the loader turns convolution kernels into MLX's layout). Group
norms compute their statistics in
float32 whatever the activation dtype: over a 1024x1024 feature map a bf16 mean would drift.
On the CPU, decoding runs block by block and large convolutions in strips, to bound the scratch
memory that MLX's patch-unfolding convolutions need at full resolution.
"""

import mlx.core as mx
import mlx.nn as nn

from ollama_img.models.configs import AutoencoderKLConfig


class GroupNorm(nn.Module):
    """PyTorch's GroupNorm on channels-last input.

    Each group is gathered into one row and normalised by `mx.fast.layer_norm`, which accumulates its
    statistics in float32: reducing over the scattered (pixels, channels-of-group) axes directly is
    two orders of magnitude slower on CUDA at 1024x1024.
    """

    def __init__(self, groups: int, channels: int, eps: float = 1e-6):
        super().__init__()
        self.groups, self.eps = groups, eps
        self.weight = mx.ones((channels,))
        self.bias = mx.zeros((channels,))

    def __call__(self, x: mx.array) -> mx.array:
        b, h, w, c = x.shape
        g = self.groups
        y = x.reshape(b, h * w, g, c // g).transpose(0, 2, 1, 3).reshape(b, g, -1)
        y = mx.fast.layer_norm(y, None, None, self.eps)
        y = y.reshape(b, g, h * w, c // g).transpose(0, 2, 1, 3).reshape(b, h, w, c)
        return y * self.weight + self.bias


class Conv2d(nn.Conv2d):
    """A stride-1 convolution that works through large inputs in strips of rows.

    MLX lowers a convolution to a matrix product over unfolded patches, kh * kw times the input's
    size: at 1024x1024 with 256 channels that is 4.8 GB for one 3x3 convolution. Strips with a halo
    of `kh // 2` rows give every output pixel the same inputs and bound that scratch memory.
    """

    SCRATCH_BYTES = 128 * 2**20  # unfolded patches per strip (measured on the CPU: peak ~2x this)

    def __call__(self, x: mx.array) -> mx.array:
        b, h, w, c = x.shape
        kh, kw = self.weight.shape[1:3]
        per_row = b * w * kh * kw * c * x.dtype.size
        on_gpu = mx.default_device() == mx.gpu  # measured: no scratch growth there, and decode is compiled
        if on_gpu or kh == 1 or self.stride != (1, 1) or per_row * h <= self.SCRATCH_BYTES:
            return super().__call__(x)
        pad = self.padding[0]
        rows = max(1, self.SCRATCH_BYTES // per_row)
        strips = []
        for top in range(0, h, rows):
            bottom = min(h, top + rows)
            lo, hi = max(0, top - pad), min(h, bottom + pad)
            strip = mx.pad(x[:, lo:hi], [(0, 0), (pad - (top - lo), pad - (hi - bottom)), (0, 0), (0, 0)])
            out = mx.conv2d(strip, self.weight, padding=(0, self.padding[1]))
            out = out + self.bias if "bias" in self else out
            mx.eval(out)  # one strip's scratch at a time: lazily, MLX would schedule them all at once
            strips.append(out)
        return mx.concatenate(strips, axis=1)


class ResnetBlock2D(nn.Module):
    def __init__(self, in_c: int, out_c: int, groups: int):
        super().__init__()
        self.norm1 = GroupNorm(groups, in_c)
        self.conv1 = Conv2d(in_c, out_c, 3, padding=1)
        self.norm2 = GroupNorm(groups, out_c)
        self.conv2 = Conv2d(out_c, out_c, 3, padding=1)
        if in_c != out_c:
            self.conv_shortcut = nn.Conv2d(in_c, out_c, 1)

    def __call__(self, x: mx.array) -> mx.array:
        h = self.conv1(nn.silu(self.norm1(x)))
        h = self.conv2(nn.silu(self.norm2(h)))
        if "conv_shortcut" in self:
            x = self.conv_shortcut(x)
        return x + h


class AttentionBlock(nn.Module):
    """Single-head self-attention over all positions of the feature map, in chunks of queries.

    The head is as wide as the block (512 channels in the Flux VAE), beyond what the fused attention
    kernels take, so MLX forms the (queries x keys) score matrix. At 2048x2048 that is 65,536^2 = 2^32
    scores: MLX's matrix product overflows its 32-bit size arithmetic there and the process dies of
    SIGFPE (on the CPU and on CUDA alike), and below that the matrix still takes gigabytes. Each query's
    softmax only involves its own row, so chunks of queries give the same numbers with at most
    MAX_SCORES scores at a time (on a GPU one chunk up to 1024x1024 images: nothing changes there). On
    the CPU chunks are smaller: 2^26 scores (256 MB) took within 10 % of 2^28's time at 1536x1536 for a
    quarter of the memory; 2^22 was 40 % slower (bench/attention_chunks.py).
    """

    MAX_SCORES = 2**28
    CPU_SCORES = 2**26

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.group_norm = GroupNorm(groups, channels)
        self.to_q = nn.Linear(channels, channels)
        self.to_k = nn.Linear(channels, channels)
        self.to_v = nn.Linear(channels, channels)
        self.to_out = [nn.Linear(channels, channels)]

    def __call__(self, x: mx.array) -> mx.array:
        b, h, w, c = x.shape
        y = self.group_norm(x).reshape(b, 1, h * w, c)
        q, k, v = self.to_q(y), self.to_k(y), self.to_v(y)
        n = h * w
        on_gpu = mx.default_device() == mx.gpu
        chunk = max(1, (self.MAX_SCORES if on_gpu else min(self.MAX_SCORES, self.CPU_SCORES)) // n)
        if chunk >= n:
            y = mx.fast.scaled_dot_product_attention(q, k, v, scale=c**-0.5)
        else:
            parts = []
            for start in range(0, n, chunk):
                part = mx.fast.scaled_dot_product_attention(
                    q[:, :, start : start + chunk], k, v, scale=c**-0.5
                )
                if not on_gpu:
                    mx.eval(part)  # one chunk's scores at a time: lazily, MLX would hold them all at once
                parts.append(part)
            y = mx.concatenate(parts, axis=2)
        return x + self.to_out[0](y).reshape(b, h, w, c)


class MidBlock(nn.Module):
    def __init__(self, channels: int, groups: int, attention: bool):
        super().__init__()
        self.resnets = [ResnetBlock2D(channels, channels, groups), ResnetBlock2D(channels, channels, groups)]
        self.attentions = [AttentionBlock(channels, groups)] if attention else []

    def __call__(self, x: mx.array) -> mx.array:
        x = self.resnets[0](x)
        for attn in self.attentions:
            x = attn(x)
        return self.resnets[1](x)


class Upsample2D(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = Conv2d(channels, channels, 3, padding=1)

    def __call__(self, x: mx.array) -> mx.array:
        b, h, w, c = x.shape
        x = mx.broadcast_to(x[:, :, None, :, None, :], (b, h, 2, w, 2, c)).reshape(b, 2 * h, 2 * w, c)
        return self.conv(x)


class Downsample2D(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def __call__(self, x: mx.array) -> mx.array:
        return self.conv(mx.pad(x, [(0, 0), (0, 1), (0, 1), (0, 0)]))


class UpDecoderBlock2D(nn.Module):
    def __init__(self, in_c: int, out_c: int, n: int, groups: int, upsample: bool):
        super().__init__()
        self.resnets = [ResnetBlock2D(in_c if i == 0 else out_c, out_c, groups) for i in range(n)]
        if upsample:
            self.upsamplers = [Upsample2D(out_c)]

    def __call__(self, x: mx.array) -> mx.array:
        for r in self.resnets:
            x = r(x)
        return self.upsamplers[0](x) if "upsamplers" in self else x


class DownEncoderBlock2D(nn.Module):
    def __init__(self, in_c: int, out_c: int, n: int, groups: int, downsample: bool):
        super().__init__()
        self.resnets = [ResnetBlock2D(in_c if i == 0 else out_c, out_c, groups) for i in range(n)]
        if downsample:
            self.downsamplers = [Downsample2D(out_c)]

    def __call__(self, x: mx.array) -> mx.array:
        for r in self.resnets:
            x = r(x)
        return self.downsamplers[0](x) if "downsamplers" in self else x


class Decoder(nn.Module):
    def __init__(self, cfg: AutoencoderKLConfig):
        super().__init__()
        ch, g = cfg.block_out_channels, cfg.norm_num_groups
        self.conv_in = Conv2d(cfg.latent_channels, ch[-1], 3, padding=1)
        self.mid_block = MidBlock(ch[-1], g, cfg.mid_block_add_attention)
        rev = list(reversed(ch))
        self.up_blocks = [
            UpDecoderBlock2D(rev[max(i - 1, 0)], c, cfg.layers_per_block + 1, g, upsample=i < len(rev) - 1)
            for i, c in enumerate(rev)
        ]
        self.conv_norm_out = GroupNorm(g, ch[0])
        self.conv_out = Conv2d(ch[0], cfg.out_channels, 3, padding=1)

    def __call__(self, z: mx.array) -> mx.array:
        x = self.head(z)
        for block in self.up_blocks:
            x = block(x)
            if mx.default_device() != mx.gpu:  # block by block: free one block's scratch before the next
                mx.eval(x)
        return self.tail(x)

    def head(self, z: mx.array) -> mx.array:
        return self.mid_block(self.conv_in(z))

    def tail(self, x: mx.array) -> mx.array:
        return self.conv_out(nn.silu(self.conv_norm_out(x)))

    def pieces(self, mode: str) -> list:
        """The decoder as a chain of callables, evaluated one after another: each up block (`blocks`), or
        each resnet, attention and upsampler (`layers`)."""
        if mode == "blocks":
            return [self.head, *self.up_blocks, self.tail]
        mid = self.mid_block
        pieces = [self.conv_in, mid.resnets[0], *mid.attentions, mid.resnets[1]]
        for block in self.up_blocks:
            pieces += [*block.resnets, *block.get("upsamplers", [])]
        return [*pieces, self.tail]


class Encoder(nn.Module):
    def __init__(self, cfg: AutoencoderKLConfig):
        super().__init__()
        ch, g = cfg.block_out_channels, cfg.norm_num_groups
        self.conv_in = Conv2d(cfg.in_channels, ch[0], 3, padding=1)
        self.down_blocks = [
            DownEncoderBlock2D(ch[max(i - 1, 0)], c, cfg.layers_per_block, g, downsample=i < len(ch) - 1)
            for i, c in enumerate(ch)
        ]
        self.mid_block = MidBlock(ch[-1], g, cfg.mid_block_add_attention)
        self.conv_norm_out = GroupNorm(g, ch[-1])
        self.conv_out = Conv2d(ch[-1], 2 * cfg.latent_channels, 3, padding=1)

    def __call__(self, x: mx.array) -> mx.array:
        x = self.conv_in(x)
        for block in self.down_blocks:
            x = block(x)
        x = self.mid_block(x)
        return self.conv_out(nn.silu(self.conv_norm_out(x)))


class CompiledPieces:
    """The decoder's pieces, compiled on a GPU once each (compiling traces again per input shape)."""

    def __init__(self):
        self._functions = {}

    def get(self, key, piece):
        if mx.default_device() != mx.gpu:
            return piece
        if key not in self._functions:
            self._functions[key] = mx.compile(piece)
        return self._functions[key]


class AutoencoderKL(nn.Module):
    def __init__(self, cfg: AutoencoderKLConfig):
        super().__init__()
        self.config = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self._decode = None
        self._compiled = CompiledPieces()

    def decode(self, latents: mx.array, mode: str = "whole") -> mx.array:
        """Latents (B, C, h, w), diffusers' layout -> images (B, H, W, 3) in [-1, 1].

        `mode` is the memory plan's: `whole`, one graph; `blocks` or `layers`, the decoder's pieces
        (`Decoder.pieces`) evaluated one after another, so that one piece's temporaries are alive at a
        time (block by block: about 2 GB instead of 12 GB above the weights at 1024x1024 on an H100). On a GPU each graph is compiled (norms, activations and residual adds
        fuse: 55 ms instead of 100 ms for the whole decode at 1024x1024 on an H100); on the CPU they
        run eagerly, with their large convolutions in strips.
        """
        if mode == "whole":
            if mx.default_device() == mx.gpu:
                if self._decode is None:
                    self._decode = mx.compile(self._decode_eager)
                return self._decode(latents)
            return self._decode_eager(latents)
        x = self._latents_in(latents)
        for index in range(len(self.decoder.pieces(mode))):
            x = self.run_piece(mode, index, x)
            mx.eval(x)  # waited for: with the next piece built meanwhile, two pieces' temporaries would live
        return x

    def run_piece(self, mode: str, index: int, x: mx.array) -> mx.array:
        """Piece `index` of the decoder in `mode` (`blocks` or `layers`) on `x`, compiled on a GPU."""
        return self._compiled.get((mode, index), self.decoder.pieces(mode)[index])(x)

    def piece_inputs(
        self, latents: mx.array, mode: str
    ) -> list[tuple[str, tuple[int, ...], tuple[int, ...]]]:
        """(what, input shape, output shape) of each piece in `mode`, traced lazily: nothing is evaluated.
        `what` names the piece's kind and channels: pieces alike compile to the same kernels."""
        x = self._latents_in(latents)
        out = []
        for piece in self.decoder.pieces(mode):
            y = piece(x)
            name = getattr(piece, "__name__", type(piece).__name__)
            out.append((f"{name} {x.shape[-1]}->{y.shape[-1]}", tuple(x.shape), tuple(y.shape)))
            x = y
        return out

    @property
    def shift(self) -> float:
        return self.config.shift_factor or 0.0

    def _latents_in(self, latents: mx.array) -> mx.array:
        return (latents / self.config.scaling_factor + self.shift).transpose(0, 2, 3, 1)

    def _decode_eager(self, latents: mx.array) -> mx.array:
        return self.decoder(self._latents_in(latents))

    def encode(self, images: mx.array) -> mx.array:
        """Images (B, H, W, 3) in [-1, 1] -> scaled latents (B, C, h, w): the mode of the posterior."""
        moments = self.encoder(images)
        mean = moments[..., : self.config.latent_channels]
        return ((mean - self.shift) * self.config.scaling_factor).transpose(0, 3, 1, 2)
