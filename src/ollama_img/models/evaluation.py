"""Evaluating a chain of blocks a chunk at a time, as the memory plan says (`memory.plan.Evaluation`).

MLX builds a lazy graph and frees a block's temporaries only once the device has run it; a graph of
a whole stack keeps every block's temporaries until the device catches up with the host (15 GB above
the weights for Z-Image's 30 blocks at 1024x1024 on an H100). Evaluating every few blocks bounds
that. Pipelined, the next chunk is built while the device runs this one, so the device never waits
for the host; the chunk before is waited for, which bounds what is alive to about two chunks.
Evaluation points change when the device runs the operations, never which operations: the numbers are
the same.
"""

from __future__ import annotations

import mlx.core as mx

from ollama_img.memory.plan import Evaluation

# A fixed evaluation for pipelines that follow no memory plan (FLUX.2): on a GPU, every SUBMIT_EVERY
# blocks of a pass of at least SUBMIT_MIN_TOKENS tokens. Measured on Z-Image at 1024x1024 (H100): one
# step's peak 4.3 GB above the weights instead of 14.6 GB, for about 4% of the step's time.
SUBMIT_EVERY = 6
SUBMIT_MIN_TOKENS = 4096


class Chunks:
    """Call `after(i, *arrays)` after block i of a chain: every `evaluation.chunk` blocks it evaluates them,
    and after the chain's last block when told (`last`), however many blocks that chunk has."""

    def __init__(self, evaluation: Evaluation | None):
        self.chunk = None if evaluation is None else evaluation.chunk
        self.pipelined = evaluation is not None and evaluation.pipelined
        self._pending: tuple[mx.array, ...] = ()

    def after(self, index: int, *arrays: mx.array | None, last: bool = False) -> None:
        if self.chunk is None or ((index + 1) % self.chunk and not last):
            return
        arrays = tuple(a for a in arrays if a is not None)
        if not self.pipelined:
            mx.eval(*arrays)
            return
        mx.async_eval(*arrays)
        if self._pending:
            mx.eval(*self._pending)  # the chunk before: done, or nearly, by the time this one is queued
        self._pending = arrays
