"""FLUX.2 [klein]'s configurations: Flux2Transformer2DModel and AutoencoderKLFlux2, as plain dataclasses
(no MLX: `create` and `show` read them to know what a model can do). Defaults are diffusers' 0.42
defaults (FLUX.2 [dev]'s transformer), what a config.json that leaves a key out means."""

from __future__ import annotations

from dataclasses import dataclass

from ollama_img.models.configs import AutoencoderKLConfig, config_from_dict

TIME_CHANNELS = 256  # sinusoidal timestep features (timestep_guidance_channels)
PATCH = 2  # latent pixels per token side: the transformer sees 2x2 patches of the VAE latent


@dataclass(frozen=True)
class Flux2Config:
    in_channels: int = 128
    out_channels: int | None = None
    num_layers: int = 8
    num_single_layers: int = 48
    attention_head_dim: int = 128
    num_attention_heads: int = 48
    joint_attention_dim: int = 15360
    timestep_guidance_channels: int = TIME_CHANNELS
    mlp_ratio: float = 3.0
    axes_dims_rope: tuple[int, ...] = (32, 32, 32, 32)
    rope_theta: float = 2000.0
    eps: float = 1e-6
    guidance_embeds: bool = True

    @classmethod
    def from_dict(cls, cfg: dict) -> Flux2Config:
        if cfg.get("patch_size", 1) != 1:
            raise ValueError("only patch_size 1 is supported")
        c = config_from_dict(cls, cfg)
        if c.timestep_guidance_channels != TIME_CHANNELS:
            raise ValueError(f"timestep_guidance_channels must be {TIME_CHANNELS}")
        if sum(c.axes_dims_rope) != c.attention_head_dim or any(d % 2 for d in c.axes_dims_rope):
            raise ValueError("axes_dims_rope must be even and sum to attention_head_dim")
        return c

    @property
    def dim(self) -> int:
        return self.num_attention_heads * self.attention_head_dim

    @property
    def mlp_hidden(self) -> int:
        return int(self.dim * self.mlp_ratio)

    @property
    def output_channels(self) -> int:
        return self.out_channels or self.in_channels


@dataclass(frozen=True)
class Flux2VaeConfig:
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
        for key, kind in (("down_block_types", "DownEncoderBlock2D"), ("up_block_types", "UpDecoderBlock2D")):
            if any(t != kind for t in cfg.get(key) or ()):
                raise ValueError(f"only {kind} blocks are supported")
        if cfg.get("act_fn", "silu") != "silu":
            raise ValueError("only act_fn silu is supported")
        c = config_from_dict(cls, cfg)
        if tuple(c.patch_size) != (PATCH, PATCH):
            raise ValueError(f"only patch_size [{PATCH}, {PATCH}] is supported")
        return c

    def blocks(self, decoder: bool) -> AutoencoderKLConfig:
        """The shape of the encoder's or the decoder's blocks, as the shared AutoencoderKL blocks take it."""
        channels = (self.decoder_block_out_channels if decoder else None) or self.block_out_channels
        return AutoencoderKLConfig(
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
    def size_unit(self) -> int:
        """Image sides are multiples of this: one token covers it."""
        return self.scale_factor * PATCH

    @property
    def token_features(self) -> int:
        return self.latent_channels * PATCH * PATCH
