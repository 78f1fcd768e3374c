"""ZImageTransformer2DModel's configuration (diffusers 0.42 defaults, which are Z-Image-Turbo's)."""

from __future__ import annotations

from dataclasses import dataclass

from ollama_img.models.configs import config_from_dict

ADALN_DIM = 256  # width of the timestep embedding that drives adaLN
PATCH = 2  # image latents are cut into PATCH x PATCH patches
SEQ_MULTIPLE = 32  # the transformer pads image and caption tokens each to a multiple of this
TEXT_LAYER = -2  # diffusers' ZImagePipeline embeds prompts with hidden_states[-2]


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
    def from_dict(cls, cfg: dict) -> ZImageConfig:
        if list(cfg.get("all_patch_size", [PATCH])) != [PATCH] or list(cfg.get("all_f_patch_size", [1])) != [
            1
        ]:
            raise ValueError(f"only patch size {PATCH} (frame patch 1) is supported")
        if cfg.get("n_kv_heads", cfg.get("n_heads")) != cfg.get("n_heads"):
            raise ValueError("n_kv_heads must equal n_heads")
        if not cfg.get("qk_norm", True):
            raise ValueError("only qk_norm=True is supported")
        if cfg.get("siglip_feat_dim") is not None:
            raise ValueError("the Omni (SigLIP) variant is not supported")
        config = config_from_dict(cls, cfg)
        if config.dim // config.n_heads != sum(config.axes_dims):
            raise ValueError("head dim must equal sum(axes_dims)")
        return config

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def adaln_dim(self) -> int:
        return min(self.dim, ADALN_DIM)
