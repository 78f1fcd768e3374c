"""TeaCache on the tiny model: threshold 0 changes nothing; a loose threshold skips main-stack passes."""

import numpy as np
import pytest

from ollama_img import load_pipeline
from ollama_img.models.zimage.pipeline import GenerationStats
from ollama_img.teacache import PAPER_COEFFICIENTS, TeaCache, rescale

PROMPT = "a lighthouse on a cliff at dawn"


@pytest.fixture(scope="module")
def pipe(tiny_folder):
    return load_pipeline(tiny_folder)


def run(pipe, teacache, steps=9, **kwargs):
    stats = GenerationStats()
    opts = dict(width=64, height=64, steps=steps, seed=7, teacache=teacache, stats=stats)
    latents = np.array(pipe.denoise(PROMPT, **(opts | kwargs)))
    return latents, stats


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a - b) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(np.abs(b).max() ** 2 / mse))


def test_threshold_zero_is_exactly_the_uncached_run(pipe):
    plain, plain_stats = run(pipe, None)
    cached, stats = run(pipe, 0.0)
    assert np.array_equal(plain, cached)
    assert stats.stack_passes == plain_stats.stack_passes == 9 and stats.stack_skipped == 0


# With random weights the modulated input changes by about half its size from step to step (a trained
# model changes far less), so on this model "loose" means a large threshold: measured here, 30 keeps
# 5 of 9 and 10 of 30 passes at about 29-31 dB of latent PSNR against the uncached run.
@pytest.mark.parametrize("steps", [9, 30])
def test_a_loose_threshold_runs_fewer_passes_than_steps(pipe, steps):
    full, _ = run(pipe, None, steps=steps)
    cached, stats = run(pipe, 30.0, steps=steps)
    assert 2 <= stats.stack_passes < steps  # first and last always run
    assert stats.stack_passes + stats.stack_skipped == steps
    assert psnr(cached, full) > 20  # an approximation of the same image, not a different one
    tighter, tighter_stats = run(pipe, 10.0, steps=steps)
    assert tighter_stats.stack_passes >= stats.stack_passes
    assert psnr(tighter, full) >= psnr(cached, full) - 1e-6


def test_teacache_with_guidance_in_two_branches(pipe):
    # a long prompt pads to 64 tokens, the empty negative to 32: two separately cached branches
    long_prompt = " ".join([PROMPT] * 6)
    stats = GenerationStats()
    pipe.denoise(long_prompt, width=32, height=32, steps=6, guidance=2.0, seed=1, teacache=30.0, stats=stats)
    assert stats.stack_skipped > 0
    plain = np.array(pipe.denoise(long_prompt, width=32, height=32, steps=6, guidance=2.0, seed=1))
    zero = np.array(
        pipe.denoise(long_prompt, width=32, height=32, steps=6, guidance=2.0, seed=1, teacache=0.0)
    )
    assert np.array_equal(plain, zero)


def test_negative_threshold_is_refused():
    with pytest.raises(ValueError, match="teacache threshold must be >= 0"):
        TeaCache(-0.1, 9)


def test_rescale_evaluates_the_polynomial_highest_power_first():
    x = 0.1
    expected = sum(c * x ** (len(PAPER_COEFFICIENTS) - 1 - i) for i, c in enumerate(PAPER_COEFFICIENTS))
    assert rescale(x) == pytest.approx(expected)
