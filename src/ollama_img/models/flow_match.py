"""The flow-matching sampling schedule: diffusers' FlowMatchEulerDiscreteScheduler.set_timesteps.

Pipelines differ in what they hand it: Z-Image its default sigmas (torch.linspace) and, with dynamic
shifting, the scheduler's own linear shift of the image length; FLUX.2 numpy's linspace and an
empirical `mu`. The arithmetic is float32 and in the same order as diffusers', so the sigmas match
bit for bit.
"""

import math

import numpy as np


def _linspace_f32(start: float, end: float, steps: int) -> np.ndarray:
    """torch.linspace in float32, bit for bit.

    torch counts up from start for the first steps // 2 values and down from end for the rest, with a
    float32 step and a fused multiply-add (one rounding), which float64 intermediates reproduce.
    """
    if steps == 1:
        return np.array([start], dtype=np.float32)
    lo, hi = np.float32(start), np.float32(end)
    step = np.float32((hi - lo) / np.float32(steps - 1))
    i = np.arange(steps)
    up = np.float64(lo) + np.float64(step) * i
    down = np.float64(hi) - np.float64(step) * (steps - 1 - i)
    return np.where(i < steps // 2, up, down).astype(np.float32)


def _calculate_shift(seq_len: int, base_len: int, max_len: int, base_shift: float, max_shift: float) -> float:
    m = (max_shift - base_shift) / (max_len - base_len)
    return seq_len * m + (base_shift - m * base_len)


def sigmas(
    config: dict, steps: int, image_seq_len: int, *, base: np.ndarray | None = None, mu: float | None = None
) -> np.ndarray:
    """The noise levels, float32, steps + 1 of them ending at 0, for a scheduler_config.json `config`.

    `base` are the unshifted sigmas a pipeline passes (default: torch.linspace(1, 1 / steps, steps), as
    Z-Image passes them); `mu` the dynamic shift (default: linear in `image_seq_len` between the
    config's base and max shifts).
    """
    for key in (
        "shift_terminal",
        "use_karras_sigmas",
        "use_exponential_sigmas",
        "use_beta_sigmas",
        "invert_sigmas",
    ):
        if config.get(key):
            raise ValueError(f"scheduler option {key} is not supported")
    s = _linspace_f32(1.0, 1.0 / steps, steps) if base is None else np.asarray(base).astype(np.float32)
    if config.get("use_dynamic_shifting"):
        if mu is None:
            mu = _calculate_shift(
                image_seq_len,
                config.get("base_image_seq_len", 256),
                config.get("max_image_seq_len", 4096),
                config.get("base_shift", 0.5),
                config.get("max_shift", 1.15),
            )
        if config.get("time_shift_type", "exponential") == "linear":
            s = mu / (mu + (1 / s - 1) ** 1.0)
        else:
            s = math.exp(mu) / (math.exp(mu) + (1 / s - 1) ** 1.0)
    else:
        shift = config.get("shift", 1.0)
        s = shift * s / (1 + (shift - 1) * s)
    return np.append(s.astype(np.float32), np.float32(0.0))


def model_times(sig: np.ndarray, num_train_timesteps: int = 1000) -> np.ndarray:
    """Z-Image's transformer time input for each step: (T - sigma * T) / T, as ZImagePipeline feeds it."""
    t = sig[:-1].astype(np.float32) * np.float32(num_train_timesteps)
    return ((np.float32(1000) - t) / np.float32(1000)).astype(np.float32)
