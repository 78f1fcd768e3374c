"""TeaCache: main-stack passes saved and image difference against the uncached run, at 9 and 30 steps.

    python bench/teacache.py [FOLDER] [--size 64] [--thresholds 0 10 30 60] [--write]
    python bench/teacache.py FOLDER --fit        # fit the rescale polynomial on this model's own weights

Without FOLDER a tiny random-weight folder is built. PSNR is of the final 8-bit image against the
same seed's uncached image; time is the warm generation time.
"""

import argparse
import json
import statistics
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "src"))

from bench.results import replace_section  # noqa: E402

PROMPTS = [
    "a lighthouse on a cliff at dawn, dramatic clouds",
    "a bowl of ramen on a wooden table, steam, close-up photo",
    "an astronaut riding a horse in a desert, cinematic",
]


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse))


def measure(pipe, size: int, thresholds: list[float]) -> list[dict]:
    import mlx.core as mx

    from ollama_img.models.zimage.pipeline import GenerationStats

    rows = []
    for steps in (9, 30):
        for prompt_i, prompt in enumerate(PROMPTS):
            opts = dict(width=size, height=size, steps=steps, seed=prompt_i)
            pipe.generate(prompt, **opts)  # warm-up / compile for this shape
            t0 = time.perf_counter()
            full = np.asarray(pipe.generate(prompt, **opts))
            mx.synchronize()
            full_s = time.perf_counter() - t0
            for th in thresholds:
                stats = GenerationStats()
                t0 = time.perf_counter()
                img = np.asarray(pipe.generate(prompt, teacache=th, stats=stats, **opts))
                mx.synchronize()
                rows.append(
                    dict(
                        steps=steps,
                        prompt=prompt_i,
                        threshold=th,
                        passes=stats.stack_passes,
                        psnr=psnr(img, full),
                        seconds=time.perf_counter() - t0,
                        full_seconds=full_s,
                    )
                )
    return rows


def summarize(rows: list[dict], label: str) -> str:
    lines = [
        f"{label}. Averages over {len(PROMPTS)} prompts; PSNR of the 8-bit image against the uncached run "
        "(inf: identical).",
        "",
        "| steps | threshold | main-stack passes | passes saved | PSNR (dB) | time / uncached |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    keys = sorted({(r["steps"], r["threshold"]) for r in rows})
    for steps, th in keys:
        sel = [r for r in rows if r["steps"] == steps and r["threshold"] == th]
        passes = statistics.mean(r["passes"] for r in sel)
        ps = [r["psnr"] for r in sel]
        p = "inf" if all(np.isinf(ps)) else f"{statistics.mean([x for x in ps if np.isfinite(x)] or [0]):.1f}"
        ratio = statistics.mean(r["seconds"] / r["full_seconds"] for r in sel)
        lines.append(
            f"| {steps} | {th:g} | {passes:.1f} | {100 * (1 - passes / steps):.0f}% | {p} | {ratio:.2f} |"
        )
    return "\n".join(lines)


def fit(pipe, size: int) -> list[float]:
    """Fit output-change = P(indicator-change) over the prompts' step-to-step changes (degree 4)."""
    import mlx.core as mx

    from ollama_img.teacache import TeaCache

    def rel_change(new, old) -> float:
        return float((mx.abs(new - old).mean() / mx.abs(old).mean()).item())

    xs, ys = [], []

    class Probe(TeaCache):
        """Runs every step and records how much the indicator and the stack's output changed."""

        previous_out = None

        def decide(self, step, indicator):
            if self._previous is not None:
                xs.append(rel_change(indicator, self._previous))
            self._previous = indicator
            return True

        def run(self, branch, compute, x, stack):
            out = super().run(branch, True, x, stack)
            if self.previous_out is not None:
                ys.append(rel_change(out, self.previous_out))
            self.previous_out = out
            return out

    for i, prompt in enumerate(PROMPTS):
        pipe.generate(prompt, width=size, height=size, steps=30, seed=i, teacache=Probe(1.0, 30))
    return list(np.polyfit(np.array(xs), np.array(ys), 4))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", nargs="?")
    ap.add_argument("--size", type=int, default=None)
    ap.add_argument("--thresholds", type=float, nargs="+", default=[0, 10, 30, 60])
    ap.add_argument("--fit", action="store_true")
    ap.add_argument("--json")
    ap.add_argument("--write", action="store_true")
    ap.add_argument("--title", default=None)
    args = ap.parse_args()

    import mlx.core as mx

    from ollama_img import load_pipeline

    with tempfile.TemporaryDirectory() as tmp:
        folder = args.folder
        if folder is None:
            from tests.fixtures.zimage_folder import TINY, build_zimage_folder

            folder = build_zimage_folder(Path(tmp) / "tiny", TINY)
        pipe = load_pipeline(folder)
        size = args.size or (1024 if mx.default_device() == mx.gpu else 64)
        if args.fit:
            print(json.dumps({"coefficients": fit(pipe, size)}))
            return
        rows = measure(pipe, size, args.thresholds)
    where = f"{mx.default_device()}, MLX {mx.__version__}"
    model = "tiny random-weight model" if args.folder is None else "full-size random-weight Z-Image-Turbo"
    text = summarize(rows, f"Measured {date.today()} on {where}: {model}, {size}x{size}")
    print(text)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    if args.write:
        title = args.title or (
            "TeaCache, tiny model (bench/teacache.py)"
            if args.folder is None
            else "TeaCache, full size (bench/teacache.py)"
        )
        replace_section(title, text + "\n\n" + CAVEAT)


CAVEAT = (
    "The rescale polynomial is the TeaCache paper's (published for FLUX); with random weights the "
    "modulated input changes by about half its size per step, far more than in a trained model, so "
    "thresholds here are larger than what the released weights will want. `python bench/teacache.py "
    "FOLDER --fit` fits Z-Image-Turbo's own polynomial from a real model folder."
)


if __name__ == "__main__":
    main()
