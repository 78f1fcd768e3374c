"""Where one Z-Image generation's memory peak happens: MLX's active memory, cache and peak at each
evaluation point of a generation under a memory plan.

    python bench/gpu_memory_trace.py MODEL [--budget 8GB] [--size 1024] [--json OUT.json]

MODEL is a folder or a store name (OLLAMA_IMG_MODELS says which store). The model is loaded under the
budget's plan and makes one image first (compiles, loads what the plan loads on demand); the second
image, of the same prompt unless --new-prompt, is traced. The trace records, at every point where the memory plan's evaluation waits for the
device (after each chunk of transformer or text-encoder blocks, `models.evaluation.Chunks`), after
each step and around the text, caption and decode stages:
- the active bytes;
- the peak since the point before (MLX's peak, reset at each point);
- the cache.
The stage boundaries synchronise the device, which the pipeline would not. The largest peaks are
printed with where they happened: the stage, the step, the block.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

GB = 1e9


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--budget", default=None, help="OLLAMA_IMG_GPU_MEMORY for the load (default: none)")
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument(
        "--new-prompt", action="store_true", help="trace an image of another prompt (text encoder runs)"
    )
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    if args.budget:
        os.environ["OLLAMA_IMG_GPU_MEMORY"] = args.budget

    import mlx.core as mx

    from ollama_img import load_pipeline
    from ollama_img.models import evaluation
    from ollama_img.models.zimage.pipeline import ZImagePipeline

    events: list[dict] = []
    where = {"stage": "start", "step": None, "block": 0}
    tracing = {"on": False}

    def record(what: str, sync: bool = False):
        if not tracing["on"]:
            return
        if sync:
            mx.synchronize()
        events.append(
            {
                "what": what,
                "stage": where["stage"],
                "step": where["step"],
                "block": where["block"],
                "active_gb": mx.get_active_memory() / GB,
                "peak_gb": mx.get_peak_memory() / GB,
                "cache_gb": mx.get_cache_memory() / GB,
            }
        )
        mx.reset_peak_memory()

    after = evaluation.Chunks.after

    def traced_after(self, index, *arrays):
        after(self, index, *arrays)
        if self.chunk is not None and not (index + 1) % self.chunk:
            where["block"] = index
            record("chunk evaluated")

    evaluation.Chunks.after = traced_after

    def around(name: str, stage: str):
        original = getattr(ZImagePipeline, name)

        def wrapped(self, *a, **kw):
            previous = where["stage"]
            record(f"before {stage}", sync=True)
            where["stage"], where["block"] = stage, 0
            try:
                return original(self, *a, **kw)
            finally:
                record(f"after {stage}", sync=True)
                where["stage"] = previous

        setattr(ZImagePipeline, name, wrapped)

    around("encode_prompt", "text encoder")
    around("_caption", "caption")
    around("decode", "decode")

    def on_step(step, total):
        where["stage"], where["step"], where["block"] = "denoise", step, 0
        record("step done")

    pipe = load_pipeline(args.model)
    size = {"width": args.size, "height": args.size}
    if args.steps:
        size["steps"] = args.steps
    plan = getattr(pipe, "memory_plan", None)
    print("plan:", "; ".join(plan.summary()) if plan else "none", flush=True)
    pipe.generate("a red fox in the snow", seed=1, **size)
    mx.synchronize()
    mx.reset_peak_memory()
    tracing["on"] = True
    record("before the traced image", sync=True)
    where["stage"] = "denoise"
    prompt = "an old lighthouse on a cliff at night" if args.new_prompt else "a red fox in the snow"
    pipe.generate(prompt, seed=2, on_step=on_step, **size)
    record("done", sync=True)
    tracing["on"] = False

    worst = sorted(events, key=lambda e: e["peak_gb"], reverse=True)[:8]
    print(f"{len(events)} points; the largest peaks since the point before (GB):", flush=True)
    for e in worst:
        print(
            f"  peak {e['peak_gb']:.2f}, then active {e['active_gb']:.2f}, cache {e['cache_gb']:.2f}: "
            f"{e['what']} in {e['stage']} (step {e['step']}, block {e['block']})",
            flush=True,
        )
    if args.json:
        args.json.write_text(
            json.dumps({"plan": plan.summary() if plan else None, "events": events}, indent=1)
        )


if __name__ == "__main__":
    main()
