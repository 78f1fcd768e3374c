"""FLUX.2 [klein]'s sampling schedule: the folder's FlowMatchEulerDiscreteScheduler, driven as
Flux2KleinPipeline drives it (linear sigmas from 1 to 1/steps, shifted by an empirical mu that depends
on the image's token count and the step count)."""

import numpy as np

from ollama_img.models import flow_match

# Flux2KleinPipeline's fit of mu against image tokens, at 10 and at 200 steps (compute_empirical_mu).
_SLOPE_10, _OFFSET_10 = 8.73809524e-05, 1.89833333
_SLOPE_200, _OFFSET_200 = 0.00016927, 0.45666666
_LONG_SEQUENCE = 4300  # above this many tokens only the 200-step fit is used


def empirical_mu(image_seq_len: int, steps: int) -> float:
    """mu for `image_seq_len` image tokens at `steps` steps: the two fits interpolated linearly in steps."""
    at_200 = _SLOPE_200 * image_seq_len + _OFFSET_200
    if image_seq_len > _LONG_SEQUENCE:
        return float(at_200)
    at_10 = _SLOPE_10 * image_seq_len + _OFFSET_10
    slope = (at_200 - at_10) / 190.0
    return float(slope * steps + (at_200 - 200.0 * slope))


def sigmas(config: dict, steps: int, image_seq_len: int) -> np.ndarray:
    """The noise levels, float32, steps + 1 of them ending at 0, bit for bit as the scheduler's."""
    base = np.linspace(1.0, 1 / steps, steps)
    return flow_match.sigmas(config, steps, image_seq_len, base=base, mu=empirical_mu(image_seq_len, steps))


def model_times(sig: np.ndarray, num_train_timesteps: int = 1000) -> np.ndarray:
    """The transformer's time input for each step, float32: the scheduler's timestep (sigma * T), divided
    by 1000 by the pipeline and multiplied by 1000 again inside the model, each in float32."""
    t = sig[:-1].astype(np.float32) * np.float32(num_train_timesteps)
    return ((t / np.float32(1000)).astype(np.float32) * np.float32(1000)).astype(np.float32)
