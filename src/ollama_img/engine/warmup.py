"""Warming a freshly loaded model up where nobody waits for it, and saying when kernels compile.

A request with a prompt is its own warm-up: its first image compiles what it needs, and running
anything before it would only make the person wait longer. A load-only request (`run MODEL` with no
prompt, which then asks for one; the API's preload) is answered as soon as the weights are in
memory, and the warm-up runs right after, on the device worker, while the person types: the first
image then starts with its kernels compiled and its GPU library plans made. The pipeline decides
what a warm-up runs and whether its device needs one (`benefits_from_warm_up`).

`OLLAMA_IMG_WARMUP`: `auto` (default: where the pipeline benefits, at the model's default size), `1`
(always), `WIDTHxHEIGHT` (always, at that size: the one you mostly make), `0` (never).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass

from ollama_img.errors import UserError

log = logging.getLogger("ollama_img.engine")
WARMUP_ENV = "OLLAMA_IMG_WARMUP"


@dataclass(frozen=True)
class WarmUpPolicy:
    mode: str = "auto"  # auto, on, off
    size: tuple[int, int] | None = None  # None: the model's default size

    @classmethod
    def from_env(cls) -> WarmUpPolicy:
        """The policy `OLLAMA_IMG_WARMUP` asks for; a UserError naming the variable when it is not one."""
        raw = os.environ.get(WARMUP_ENV, "").strip().lower()
        if raw in ("", "auto"):
            return cls()
        if raw in ("1", "on"):
            return cls("on")
        if raw in ("0", "off"):
            return cls("off")
        from ollama_img.engine.params import parse_size

        try:
            return cls("on", parse_size(raw))
        except UserError:
            raise UserError(f"{WARMUP_ENV} must be auto, 1, 0 or WIDTHxHEIGHT, got {raw!r}") from None

    def wanted(self, pipe) -> bool:
        if not hasattr(pipe, "warm_up") or self.mode == "off":
            return False
        return self.mode == "on" or bool(getattr(pipe, "benefits_from_warm_up", False))

    def run(self, pipe, name: str) -> float:
        """Run the pipeline's warm-up (on the device worker) and log it; its seconds."""
        width, height = self.size or (None, None)
        started = time.monotonic()
        pipe.warm_up(width=width, height=height)
        seconds = time.monotonic() - started
        where = f" at {width}x{height}" if self.size else ""
        log.info("warmed up %s%s in %.2fs (warm-up)", name, where, seconds)
        return seconds


def compile_note() -> str | None:
    """A line for the log when this load's first image will compile GPU kernels (MLX's cache is empty)."""
    from ollama_img import caches

    configured = caches.configure()
    if not configured.mlx_cache_empty():
        return None
    return (
        f"MLX's kernel cache {configured.mlx_dir} is empty: GPU kernels are compiled once now "
        "(in parallel processes where the model can prime them); later starts reuse them"
    )
