"""TeaCache: skip a DiT's main block stack on steps where its input barely changed.

At every step the pipeline shows the cache an *indicator*: the timestep-modulated input of the first
main block. The relative L1 change of the indicator since the previous step is rescaled by a
polynomial (the model's output changes non-linearly with its input) and accumulated. While the sum
stays under the threshold, the stack is skipped and its output is approximated by its input plus the
residual (output - input) of the last step that did run; when the sum reaches the threshold the stack
runs, the residual is refreshed and the sum restarts. The first and the last step always run.

Threshold 0 never skips, so the output is then exactly the uncached one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the CLI reads DEFAULT_THRESHOLD from here without paying for MLX
    import mlx.core as mx

# The rescaling polynomial published with TeaCache (highest power first). A polynomial fitted on
# Z-Image-Turbo's own weights would make thresholds mean the same error on that model; fitting
# needs the released weights, which `bench/teacache.py --fit` does given a real model.
PAPER_COEFFICIENTS = (4.98651651e02, -2.83781631e02, 5.58554382e01, -3.82021401e00, 2.64230861e-01)

# What `run --teacache` uses without a value: the paper's setting for about 1.8x fewer passes on FLUX.
DEFAULT_THRESHOLD = 0.4


def rescale(x: float, coefficients=PAPER_COEFFICIENTS) -> float:
    result = 0.0
    for c in coefficients:
        result = result * x + c
    return result


@dataclass
class TeaCache:
    threshold: float
    steps: int
    coefficients: tuple[float, ...] = PAPER_COEFFICIENTS
    computed: int = 0  # main-stack passes that ran
    skipped: int = 0  # main-stack passes replaced by the cached residual
    _previous: mx.array | None = None
    _accumulated: float = 0.0
    _residuals: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.threshold < 0:
            raise ValueError(f"teacache threshold must be >= 0, got {self.threshold}")

    def decide(self, step: int, indicator: mx.array) -> bool:
        """Whether the main stack must run at this step (True) or may reuse the cached residual."""
        import mlx.core as mx

        previous, self._previous = self._previous, indicator
        if step == 0 or step == self.steps - 1 or previous is None or self.threshold == 0:
            run = True
        else:
            change = mx.abs(indicator - previous).mean() / (mx.abs(previous).mean() + 1e-12)
            self._accumulated += rescale(change.item(), self.coefficients)
            run = self._accumulated >= self.threshold or not self._residuals
        if run:
            self._accumulated = 0.0
        return run

    def run(self, branch: str, compute: bool, x: mx.array, stack) -> mx.array:
        """The main stack's output for input x: computed (and its residual kept) or approximated."""
        if compute or branch not in self._residuals:
            out = stack(x)
            self._residuals[branch] = out - x
            self.computed += 1
            return out
        self.skipped += 1
        return x + self._residuals[branch]
