"""The shared flow-matching schedule against diffusers' FlowMatchEulerDiscreteScheduler, as FLUX.2
[klein] drives it: numpy's linspace as the base sigmas and an empirical mu (Z-Image's way is in
test_parity.py)."""

import numpy as np
import pytest

from ollama_img.models import flow_match

diffusers = pytest.importorskip("diffusers")

CONFIG = {
    "num_train_timesteps": 1000,
    "shift": 3.0,
    "use_dynamic_shifting": True,
    "base_shift": 0.5,
    "max_shift": 1.15,
    "base_image_seq_len": 256,
    "max_image_seq_len": 4096,
    "time_shift_type": "exponential",
}


@pytest.mark.parametrize("shift_type", ["exponential", "linear"])
@pytest.mark.parametrize("steps", [1, 4, 28, 50])
def test_given_base_sigmas_and_mu_match_bit_for_bit(shift_type, steps):
    from diffusers import FlowMatchEulerDiscreteScheduler
    from diffusers.pipelines.flux2.pipeline_flux2_klein import compute_empirical_mu

    config = {**CONFIG, "time_shift_type": shift_type}
    reference = FlowMatchEulerDiscreteScheduler.from_config(config)
    for seq in (256, 1024, 4096, 5000):
        base = np.linspace(1.0, 1 / steps, steps)
        mu = compute_empirical_mu(image_seq_len=seq, num_steps=steps)
        reference.set_timesteps(sigmas=base, mu=mu)
        ours = flow_match.sigmas(config, steps, seq, base=base, mu=mu)
        np.testing.assert_array_equal(ours, reference.sigmas.numpy())
