"""AutoencoderKLFlux2 in MLX: the Flux VAE's encoder and decoder with 32 latent channels, 1x1 quant
convolutions, and a batch norm's running statistics that normalise the 2x2-patchified latents.

FLUX.2's transformer works on packed tokens: the VAE latent (32 channels) cut into 2x2 patches, each
patch one token of 128 features (channel c, row offset i, column offset j -> feature 4c + 2i + j, as
diffusers' `_patchify_latents`), normalised by `bn.running_mean` / `bn.running_var`. `encode_tokens`
and `decode_tokens` go between images and those tokens. The convolutional blocks are the shared
AutoencoderKL ones (`models.autoencoder_kl`: the same diffusers Encoder and Decoder); names follow the
checkpoint.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from ollama_img.models.autoencoder_kl import Decoder, Encoder
from ollama_img.models.flux2.config import PATCH, Flux2VaeConfig


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

        Compiled on a GPU (as the AutoencoderKL: the norms, activations and residual adds fuse); eager on
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
    def parameter_name(checkpoint_name: str) -> str | None:
        """The batch norm's step counter is not a statistic: it is not loaded."""
        return None if checkpoint_name == "bn.num_batches_tracked" else checkpoint_name
