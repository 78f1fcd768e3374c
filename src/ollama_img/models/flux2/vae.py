"""AutoencoderKLFlux2 in MLX: the Flux VAE's encoder and decoder with 32 latent channels, 1x1 quant
convolutions, and a batch norm's running statistics that normalise the 2x2-patchified latents.

FLUX.2's transformer works on packed tokens: the VAE latent (32 channels) cut into 2x2 patches, each
patch one token of 128 features (channel c, row offset i, column offset j -> feature 4c + 2i + j, as
diffusers' `_patchify_latents`), normalised by `bn.running_mean` / `bn.running_var`. `encode_tokens`
and `decode_tokens` go between images and those tokens. The convolutional blocks are Z-Image's (the
same diffusers Encoder/Decoder); names follow the checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import mlx.core as mx
import mlx.nn as nn

from ollama_img.models.zimage.vae import Decoder, Encoder, VaeConfig

PATCH = 2  # latent pixels per token side


@dataclass(frozen=True)
class Flux2VaeConfig:
    """vae/config.json; defaults are diffusers' AutoencoderKLFlux2 defaults."""

    in_channels: int = 3
    out_channels: int = 3
    block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
    decoder_block_out_channels: tuple[int, ...] | None = None
    layers_per_block: int = 2
    latent_channels: int = 32
    norm_num_groups: int = 32
    use_quant_conv: bool = True
    use_post_quant_conv: bool = True
    mid_block_add_attention: bool = True
    batch_norm_eps: float = 1e-4
    patch_size: tuple[int, ...] = (PATCH, PATCH)

    @classmethod
    def from_dict(cls, cfg: dict) -> Flux2VaeConfig:
        known = {f.name for f in fields(cls)}
        c = cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items() if k in known})
        if tuple(c.patch_size) != (PATCH, PATCH):
            raise ValueError("only patch_size [2, 2] is supported")
        for key, kind in (("down_block_types", "DownEncoderBlock2D"), ("up_block_types", "UpDecoderBlock2D")):
            if any(t != kind for t in cfg.get(key, ())):
                raise ValueError(f"only {kind} blocks are supported")
        if cfg.get("act_fn", "silu") != "silu":
            raise ValueError("only act_fn silu is supported")
        return c

    def blocks(self, decoder: bool) -> VaeConfig:
        """The shape of the encoder's or the decoder's blocks, as Z-Image's VAE modules take it."""
        channels = (self.decoder_block_out_channels if decoder else None) or self.block_out_channels
        return VaeConfig(
            block_out_channels=tuple(channels),
            layers_per_block=self.layers_per_block,
            latent_channels=self.latent_channels,
            norm_num_groups=self.norm_num_groups,
            in_channels=self.in_channels,
            out_channels=self.out_channels,
            mid_block_add_attention=self.mid_block_add_attention,
        )

    @property
    def scale_factor(self) -> int:
        """Image pixels per latent pixel along each side."""
        return 2 ** (len(self.block_out_channels) - 1)

    @property
    def token_features(self) -> int:
        return self.latent_channels * PATCH * PATCH


class BatchNormStats(nn.Module):
    """The running statistics of the checkpoint's (affine-free) batch norm over token features."""

    def __init__(self, features: int, eps: float):
        super().__init__()
        self.eps = eps
        self.running_mean = mx.zeros((features,))
        self.running_var = mx.ones((features,))

    def std(self) -> mx.array:
        return mx.sqrt(self.running_var.astype(mx.float32) + self.eps)


class AutoencoderKLFlux2(nn.Module):
    def __init__(self, cfg: Flux2VaeConfig):
        super().__init__()
        self.config = cfg
        c = cfg.latent_channels
        self.encoder = Encoder(cfg.blocks(decoder=False))
        self.decoder = Decoder(cfg.blocks(decoder=True))
        if cfg.use_quant_conv:
            self.quant_conv = nn.Conv2d(2 * c, 2 * c, 1)
        if cfg.use_post_quant_conv:
            self.post_quant_conv = nn.Conv2d(c, c, 1)
        self.bn = BatchNormStats(cfg.token_features, cfg.batch_norm_eps)
        self._decode = None
        self._encode = None
        self.compile_encoder = True

    def encode_tokens(self, images: mx.array) -> mx.array:
        """Images (B, H, W, 3) in [-1, 1] -> normalised packed tokens (B, H/16 * W/16, 128), from the mode
        of the posterior (what Flux2KleinPipeline takes of a reference image). Compiled on a GPU, as the
        decoder (`compile_encoder` False: eager)."""
        if mx.default_device() == mx.gpu and self.compile_encoder:
            if self._encode is None:
                self._encode = mx.compile(self._posterior_mean)
            mean = self._encode(images)
        else:
            mean = self._posterior_mean(images)
        mean = mean.astype(mx.float32)
        b, h, w, c = mean.shape
        patches = mean.reshape(b, h // PATCH, PATCH, w // PATCH, PATCH, c).transpose(0, 1, 3, 5, 2, 4)
        tokens = patches.reshape(b, (h // PATCH) * (w // PATCH), c * PATCH * PATCH)
        return (tokens - self.bn.running_mean.astype(mx.float32)) / self.bn.std()

    def decode_tokens(self, tokens: mx.array, rows: int, cols: int) -> mx.array:
        """Normalised packed tokens (B, rows * cols, 128) -> images (B, 16 rows, 16 cols, 3) in [-1, 1].

        Compiled on a GPU (as Z-Image's VAE: the norms, activations and residual adds fuse); eager on
        the CPU, where the decoder works block by block to bound its scratch memory.
        """
        tokens = tokens.astype(mx.float32) * self.bn.std() + self.bn.running_mean.astype(mx.float32)
        if mx.default_device() == mx.gpu:
            if self._decode is None:
                self._decode = mx.compile(self._decode_latents)
            dtype = self.decoder.conv_in.weight.dtype
            return self._decode(self.unpatchify(tokens, rows, cols).astype(dtype))
        return self._decode_latents(self.unpatchify(tokens, rows, cols))

    def _posterior_mean(self, images: mx.array) -> mx.array:
        moments = self.encoder(images)
        if "quant_conv" in self:
            moments = self.quant_conv(moments)
        return moments[..., : self.config.latent_channels]

    def unpatchify(self, tokens: mx.array, rows: int, cols: int) -> mx.array:
        """(B, rows * cols, 4c) -> channels-last latents (B, 2 rows, 2 cols, c)."""
        b, _, features = tokens.shape
        c = features // (PATCH * PATCH)
        x = tokens.reshape(b, rows, cols, c, PATCH, PATCH).transpose(0, 1, 4, 2, 5, 3)
        return x.reshape(b, rows * PATCH, cols * PATCH, c)

    def _decode_latents(self, z: mx.array) -> mx.array:
        if "post_quant_conv" in self:
            z = self.post_quant_conv(z)
        return self.decoder(z)

    @staticmethod
    def sanitize(weights: dict[str, mx.array]) -> dict[str, mx.array]:
        """PyTorch conv kernels (out, in, kh, kw) -> MLX (out, kh, kw, in); the batch norm's step counter
        is not a statistic."""
        return {
            k: v.transpose(0, 2, 3, 1) if v.ndim == 4 else v
            for k, v in weights.items()
            if k != "bn.num_batches_tracked"
        }
