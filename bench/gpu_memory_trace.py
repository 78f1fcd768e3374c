"""Where a Z-Image engine's memory peaks happen, in MLX and in the CUDA driver's pool under it, from the
load through three images under a memory plan.

    python bench/gpu_memory_trace.py MODEL [--budget 8GB] [--size 1024] [--json OUT.json]

MODEL is a folder or a store name (OLLAMA_IMG_MODELS says which store). The trace covers the load, a
first image (compiles, loads what the plan loads on demand), a second of the same prompt and a third of
a new prompt (the text encoder runs again). It records, at every point where the memory plan's
evaluation waits for the device (after each chunk of transformer or text-encoder blocks,
`models.evaluation.Chunks`), after each step and around the load, text, caption and decode stages:
- MLX's active bytes, its cache, and its peak since the point before (reset at each point);
- on CUDA, what the driver's pool reserves and uses now, and the most of each since the point before
  (nvidia-smi counts the pool's reserve plus the context, about 0.6 GB).
The stage boundaries synchronise the device, which the pipeline would not; with `--trim` they also trim
the pool, to see how much of its reserve a trim between stages would give back. The largest peaks of MLX and
of the pool are printed with where they happened: the image, the stage, the step, the block.
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
    ap.add_argument("--json", type=Path)
    ap.add_argument(
        "--trim",
        action="store_true",
        help="trim the CUDA pool at every stage boundary (does the reserve come back, and the peak drop?)",
    )
    args = ap.parse_args()
    if args.budget:
        os.environ["OLLAMA_IMG_GPU_MEMORY"] = args.budget

    import mlx.core as mx

    from ollama_img import load_pipeline
    from ollama_img.memory import cuda_pool
    from ollama_img.models import evaluation
    from ollama_img.models.zimage.pipeline import ZImagePipeline

    events: list[dict] = []
    where = {"image": 0, "stage": "start", "step": None, "block": 0}

    def record(what: str, sync: bool = False):
        if sync:
            mx.synchronize()
            if args.trim:
                cuda_pool.trim()
        pool = cuda_pool.usage()
        events.append(
            {
                "what": what,
                "image": where["image"],
                "stage": where["stage"],
                "step": where["step"],
                "block": where["block"],
                "active_gb": mx.get_active_memory() / GB,
                "peak_gb": mx.get_peak_memory() / GB,
                "cache_gb": mx.get_cache_memory() / GB,
                "pool_reserved_gb": pool and pool.reserved / GB,
                "pool_used_gb": pool and pool.used / GB,
                "pool_reserved_high_gb": pool and pool.reserved_high / GB,
                "pool_used_high_gb": pool and pool.used_high / GB,
            }
        )
        mx.reset_peak_memory()
        cuda_pool.reset_high()

    after = evaluation.Chunks.after

    def traced_after(self, index, *arrays, last=False):
        after(self, index, *arrays, last=last)
        if self.chunk is not None and (last or not (index + 1) % self.chunk):
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

    def on_step(step, total):  # called once the step's latents are in, which may be a step late
        where["stage"], where["step"], where["block"] = "denoise", step, 0
        record("step done")

    mx.eval(mx.zeros(1))
    record("context", sync=True)
    where["stage"] = "load"
    pipe = load_pipeline(args.model)
    record("loaded", sync=True)
    size = {"width": args.size, "height": args.size}
    if args.steps:
        size["steps"] = args.steps
    plan = getattr(pipe, "memory_plan", None)
    print("plan:", "; ".join(plan.summary()) if plan else "none", flush=True)
    prompts = ("a red fox in the snow", "a red fox in the snow", "an old lighthouse on a cliff at night")
    for image, prompt in enumerate(prompts, 1):
        where.update(image=image, stage="denoise", step=None, block=0)
        pipe.generate(prompt, seed=image, on_step=on_step, **size)
        where["stage"] = "after"
        record("done", sync=True)

    def show(key: str, title: str):
        print(f"{len(events)} points; the largest {title} since the point before (GB):", flush=True)
        for e in sorted(events, key=lambda e: e[key] or 0, reverse=True)[:8]:
            print(
                f"  {e[key] or 0:.2f}: MLX active {e['active_gb']:.2f}, cache {e['cache_gb']:.2f}, "
                f"pool reserved {e['pool_reserved_gb'] or 0:.2f}, used {e['pool_used_gb'] or 0:.2f}; "
                f"{e['what']}, image {e['image']} {e['stage']} (step {e['step']}, block {e['block']})",
                flush=True,
            )

    show("peak_gb", "MLX peaks")
    show("pool_reserved_high_gb", "pool reserves")
    if args.json:
        args.json.write_text(
            json.dumps({"plan": plan.summary() if plan else None, "events": events}, indent=1)
        )


if __name__ == "__main__":
    main()
