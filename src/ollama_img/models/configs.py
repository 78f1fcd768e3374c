"""The configurations of the parts families share, as plain dataclasses, and how any config is read.

Configs import no MLX: `create` and `show` read them too (a model's capabilities, such as the sizes
it accepts, follow from them). A family keeps its own configs in `models/<family>/config.py`.

A field's default is written once, on the field, and is what the library that wrote the file
(diffusers, transformers) assumes when its config.json leaves the key out.
"""

from __future__ import annotations

from dataclasses import dataclass, fields


def config_from_dict(cls, cfg: dict, **overrides):
    """An instance of the config dataclass `cls` from a config.json object.

    Each field takes the key of its name when present and not null (JSON lists become tuples), else its
    default; `overrides` are values the caller derived itself. Other keys are ignored: they are the writing
    library's bookkeeping (`_class_name`, `_diffusers_version`) or options checked before this call.
    """
    values = {}
    for f in fields(cls):
        value = cfg.get(f.name)
        if value is not None:
            values[f.name] = tuple(value) if isinstance(value, list) else value
    values.update(overrides)
    return cls(**values)


@dataclass(frozen=True)
class AutoencoderKLConfig:
    """diffusers' AutoencoderKL (the Flux VAE of Z-Image and others), without quant convolutions."""

    block_out_channels: tuple[int, ...] = (64,)
    layers_per_block: int = 1
    latent_channels: int = 4
    norm_num_groups: int = 32
    in_channels: int = 3
    out_channels: int = 3
    scaling_factor: float = 0.18215
    shift_factor: float | None = None  # None: latents are not shifted
    mid_block_add_attention: bool = True

    @classmethod
    def from_dict(cls, cfg: dict) -> AutoencoderKLConfig:
        if cfg.get("use_quant_conv", True) or cfg.get("use_post_quant_conv", True):
            raise ValueError("VAEs with quant convolutions are not supported")
        return config_from_dict(cls, cfg)

    @property
    def scale_factor(self) -> int:
        """Pixels per latent along each side."""
        return 2 ** (len(self.block_out_channels) - 1)


@dataclass(frozen=True)
class Qwen3Config:
    """transformers' Qwen3Config, the fields the text encoder uses."""

    hidden_size: int = 4096
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int = 32
    head_dim: int = 128
    intermediate_size: int = 22016
    vocab_size: int = 151936
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10_000.0

    @classmethod
    def from_dict(cls, cfg: dict) -> Qwen3Config:
        scaling = cfg.get("rope_scaling") or cfg.get("rope_parameters") or {}
        if scaling.get("rope_type", scaling.get("type", "default")) != "default":
            raise ValueError(f"unsupported text encoder rope scaling {scaling}")
        if cfg.get("attention_bias") or cfg.get("use_sliding_window"):
            raise ValueError("text encoders with attention biases or sliding windows are not supported")
        derived = {}
        if "rope_theta" in scaling and "rope_theta" not in cfg:  # transformers 5 keeps it here
            derived["rope_theta"] = scaling["rope_theta"]
        if cfg.get("num_key_value_heads") is None and cfg.get("num_attention_heads") is not None:
            derived["num_key_value_heads"] = cfg["num_attention_heads"]
        return config_from_dict(cls, cfg, **derived)
