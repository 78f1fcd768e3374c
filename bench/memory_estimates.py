"""The memory plan for full-size Z-Image-Turbo at each budget, as the planner estimates it (no GPU, no MLX,
no weights: the bytes come from the release's configuration, tests/fixtures/full_size.py).

    python bench/memory_estimates.py [--device cuda|metal|cpu] [--write]

`--write` puts the table into bench/RESULTS.md; `bench/gpu_memory_plan.py` measures the same plans.
"""

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "src"))

from tests.fixtures.full_size import full_profile  # noqa: E402

from ollama_img.memory.budget import Budget  # noqa: E402
from ollama_img.memory.plan import DEVICES, MemoryPlanError, Request, plan_memory  # noqa: E402

GB = 1e9
PROMPT_BYTES = 90  # bench/gpu_memory_plan.py's prompt
BUDGETS = (None, 24, 16, 12, 8)


def rows(device: str) -> list[str]:
    kind = DEVICES[device]
    lines = [
        "| model | budget | size | plan | peak (MLX + pool reserve + overhead) | load / encode / denoise / decode | cache cap |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for quant in (None, "fp8", "int4"):
        profile = full_profile(quant)
        for budget in BUDGETS:
            for size in (1024, 512):
                room = Budget(int((budget or 141) * GB), "budget")
                request = Request(size, size, prompt_bytes=PROMPT_BYTES)
                label = f"{budget} GB" if budget else "unlimited (141 GB free)"
                try:
                    plan = plan_memory(profile, device=kind, budget=room, request=request)
                except MemoryPlanError as exc:
                    lines.append(
                        f"| {quant or 'bf16'} | {label} | {size}² | refused: needs {exc.need / GB:.1f} GB | | | |"
                    )
                    continue
                phases = " / ".join(
                    f"{plan.phases[p] / GB:.2f}" for p in ("load", "encode", "denoise", "decode")
                )
                lines.append(
                    f"| {quant or 'bf16'} | {label} | {size}² | {plan.residency}: {'; '.join(plan.summary())} | "
                    f"{plan.mlx_peak / GB:.2f} + {(plan.peak - plan.mlx_peak - plan.overhead) / GB:.2f} + "
                    f"{plan.overhead / GB:.2f} = {plan.peak / GB:.2f} GB | "
                    f"{phases} | {plan.cache_limit / GB:.2f} GB |"
                )
    return lines


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", choices=sorted(DEVICES), default="cuda")
    ap.add_argument("--write", action="store_true", help="write the section of bench/RESULTS.md")
    args = ap.parse_args()
    table = "\n".join(rows(args.device))
    print(table)
    if args.write:
        from bench.results import replace_section

        intro = (
            f"The planner's choices for full-size Z-Image-Turbo on {args.device} (`bench/memory_estimates.py`, "
            "bytes from the release's configuration; a 90-byte prompt; guidance 0). Peak = the largest phase "
            "(weights held + working set: MLX's peak), plus what the allocator keeps reserved beyond it (CUDA's "
            "stream-ordered pool: 12% of MLX's bytes, as measured) and the back end's own overhead (CUDA context "
            "and libraries: 0.75 GB assumed); `bench/gpu_memory_plan.py` measures the same plans on a GPU.\n\n"
        )
        replace_section(
            f"Memory plans, estimated for {args.device} (bench/memory_estimates.py)", intro + table
        )


if __name__ == "__main__":
    main()
