"""What getting the PNGs from the engine costs beyond making them: ollama's base64 line against `raw_images`.

    python bench/png_transfer.py [--size 1024] [--runs 5] [--model FOLDER]

Starts a real engine on a store of its own (the tiny test model unless --model names a folder), then
asks it, alternately, for the same image both ways through the CLI's engine client
(`engine.client.EngineClient.generate`): the base64 PNGs inside the final line, decoded here as the CLI
did, and `raw_images`, the PNGs as bytes after that line (`engine/raw_images.py`). Per request, the
overhead is the wall time from sending it to holding the PNG bytes, less the engine's own total (its
`total_duration`, which covers the queue, the generation and the PNG encoding): the engine's final
line, the transfer, and the client's parsing and decoding. Prints the median of each way.
"""

import argparse
import base64
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "src"))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--model", type=Path, help="a diffusers folder (default: the tiny test model)")
    args = ap.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="oi-png-transfer-"))
    os.environ["OLLAMA_IMG_MODELS"] = str(scratch / "store")
    os.environ["OLLAMA_IMG_RUNTIME_DIR"] = str(scratch / "run")

    from ollama_img.engine import raw_images, runtime
    from ollama_img.engine.client import connect
    from ollama_img.store import Store, import_folder, inspect_folder

    folder = args.model
    if folder is None:
        from tests.fixtures.zimage_folder import TINY, build_zimage_folder

        folder = scratch / "tiny"
        build_zimage_folder(folder, TINY)
    import_folder(Store(), "bench", inspect_folder(folder))
    body = {"model": "bench", "prompt": "a cat", "width": args.size, "height": args.size, "steps": 1}

    def overhead(client, raw: bool, seed: int) -> tuple[float, int]:
        started = time.perf_counter()
        events = list(client.generate({**body, "seed": seed, **({raw_images.FIELD: True} if raw else {})}))
        final = events[-1]
        pngs = final["pngs"] if raw else [base64.b64decode(b64) for b64 in final["images"]]
        return time.perf_counter() - started - final["total_duration"] / 1e9, len(pngs[0])

    with connect(start=True) as client:
        try:
            overhead(client, True, 0)  # loads the model
            seen = {False: [], True: []}
            size = 0
            for run in range(args.runs):
                for raw in (False, True):
                    seconds, size = overhead(client, raw, run)
                    seen[raw].append(seconds)
        finally:  # the engine of this scratch store leaves now, not after its idle time
            pid = runtime.running_engine_pid()
            if pid:
                os.kill(pid, signal.SIGTERM)
    print(f"{args.size}x{args.size}, PNG {size / 1e6:.2f} MB, {args.runs} runs each, median overhead:")
    for raw, label in ((False, "base64 in the final line"), (True, "raw_images")):
        print(f"  {label}: {1e3 * statistics.median(seen[raw]):.1f} ms")


if __name__ == "__main__":
    main()
