"""How long `ollama-img --help`, `--version`, `ps` and `list` take to start and finish, as a person runs them.

    python bench/cli_startup.py [--runs 15] [--write]

Each command runs --runs times as its own process in a private world (temporary HOME, store with the
tiny model, runtime dir), with `ps` both with no engine and against a running one. Reported: the best
wall time and the best CPU time (user + system) of the process; on a machine shared with other work
the CPU time is the steadier figure. `python -c pass` and `import typer` give the floor under any
Typer CLI. Then the trip of one PNG (1.9 MB, a 1024x1024 picture's size) from a uvicorn server on a
Unix socket, streamed as the engine streams it (nine progress lines, then the final line carrying the
base64 PNG), into bytes in the CLI: with its standard-library client and, as before, with httpx.
With --write, the tables replace the "CLI start-up" section of bench/RESULTS.md.
"""

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.results import cpu_model, replace_section  # noqa: E402

TARGET = 0.2
PNG_BYTES = 1_900_000
# A stand-in engine: the same NDJSON stream shape as /api/generate, from Starlette under uvicorn.
SERVER = """
import base64, json, os, sys
import uvicorn
from starlette.applications import Starlette
from starlette.responses import StreamingResponse
from starlette.routing import Route
PNG = os.urandom(int(sys.argv[2]))
async def generate(request):
    await request.body()
    async def lines():
        for i in range(9):
            yield json.dumps({"status": "generating", "completed": i + 1, "total": 9, "done": False}) + "\\n"
        yield json.dumps({"done": True, "images": [base64.b64encode(PNG).decode()]}) + "\\n"
    return StreamingResponse(lines(), media_type="application/x-ndjson")
app = Starlette(routes=[Route("/api/generate", generate, methods=["POST"])])
uvicorn.run(app, uds=sys.argv[1], log_level="warning")
"""


def timed(argv: list[str], env: dict, runs: int) -> tuple[float, float]:
    """Best wall and best CPU seconds of `argv` over `runs` runs."""
    walls, cpus = [], []
    for _ in range(runs):
        started = time.perf_counter()
        child = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _, status, usage = os.wait4(child.pid, 0)
        walls.append(time.perf_counter() - started)
        cpus.append(usage.ru_utime + usage.ru_stime)
        child.returncode = os.waitstatus_to_exitcode(status)
        if child.returncode != 0:
            raise SystemExit(f"{' '.join(argv)} exited {child.returncode}")
    return min(walls), min(cpus)


def transfer_times(folder: Path, runs: int) -> dict[str, float]:
    """Best seconds, over `runs`, from sending the request to holding the PNG's bytes."""
    import base64
    import json

    import httpx

    from ollama_img.engine.client import EngineClient

    sock = folder / "engine.sock"
    server = subprocess.Popen([sys.executable, "-c", SERVER, str(sock), str(PNG_BYTES)])
    try:
        deadline = time.monotonic() + 30
        while not sock.exists() and time.monotonic() < deadline:
            time.sleep(0.05)

        def stdlib():
            events = list(EngineClient(sock).generate({"model": "m", "prompt": "p"}))
            return base64.b64decode(events[-1]["images"][0])

        def with_httpx():
            transport = httpx.HTTPTransport(uds=str(sock))
            client = httpx.Client(transport=transport, base_url="http://engine", timeout=30)
            with (
                client,
                client.stream("POST", "/api/generate", json={"model": "m", "stream": True}) as response,
            ):
                events = [json.loads(line) for line in response.iter_lines() if line.strip()]
            return base64.b64decode(events[-1]["images"][0])

        best = {}
        for label, fn in (("stdlib client (the CLI's)", stdlib), ("httpx (before)", with_httpx)):
            times = []
            for _ in range(runs):
                started = time.perf_counter()
                assert len(fn()) == PNG_BYTES
                times.append(time.perf_counter() - started)
            best[label] = min(times)
        return best
    finally:
        server.terminate()
        server.wait(timeout=10)


def run_overhead(world, png: Path, runs: int) -> dict[str, float]:
    """`run` against a warm engine (the tiny model, 64x64, 2 steps): the wall time of the CLI less the
    engine's own total for the request (its work, PNG included), best of `runs`: what the CLI itself adds
    to every image (start-up, imports, checks, the trip, saving, exit)."""
    import json

    argv = world.command(
        "run",
        "tiny",
        "a fox",
        "--width",
        "64",
        "--height",
        "64",
        "--steps",
        "2",
        "--format",
        "json",
        "-o",
        str(png),
    )
    subprocess.run(argv, env=world.env, capture_output=True, check=True)  # loads the model
    best = {"wall": float("inf"), "engine": 0.0}
    for _ in range(runs):
        started = time.perf_counter()
        done = subprocess.run(argv, env=world.env, capture_output=True, text=True, check=True)
        wall = time.perf_counter() - started
        engine = json.loads(done.stdout)["durations"]["total"]
        if wall - engine < best["wall"] - best["engine"]:
            best = {"wall": wall, "engine": engine}
    return best


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--write", action="store_true")
    args = ap.parse_args()

    from tests.fixtures.engine_env import EngineEnv
    from tests.fixtures.zimage_folder import TINY, build_zimage_folder

    with tempfile.TemporaryDirectory() as tmp:
        world = EngineEnv(Path(tmp), PYTHONPATH=str(ROOT / "src"))
        try:
            folder = build_zimage_folder(Path(tmp) / "tiny", TINY)
            done = world.cli("create", "tiny", "-f", str(folder))
            assert done.returncode == 0, done.stderr
            py = [sys.executable]
            cases = [
                ("python -c pass (floor)", py + ["-c", "pass"]),
                ("python -c 'import typer' (floor of a Typer CLI)", py + ["-c", "import typer"]),
                ("ollama-img --version", world.command("--version")),
                ("ollama-img --help", world.command("--help")),
                ("ollama-img list", world.command("list")),
                ("ollama-img ps (no engine)", world.command("ps")),
            ]
            results = [(label, *timed(argv, world.env, args.runs)) for label, argv in cases]
            world.start_engine()
            results.append(
                ("ollama-img ps (engine running)", *timed(world.command("ps"), world.env, args.runs))
            )
            overhead = run_overhead(world, Path(tmp) / "out.png", args.runs)
        finally:
            world.close()
        transfers = transfer_times(Path(tmp), args.runs)

    rows = [
        f"Measured {date.today()} on {platform.machine()} ({cpu_model()}, {os.cpu_count()} cores, shared with "
        f"other work), Python {platform.python_version()}; best of {args.runs} runs, each its own process.",
        "",
        "| command | wall, s | CPU, s |",
        "| --- | --- | --- |",
        *(f"| {label} | {wall:.3f} | {cpu:.3f} |" for label, wall, cpu in results),
        "",
        f"Target: `ps`, `list` and `--help` under {TARGET} s.",
        "",
        f"`ollama-img run` against a warm engine (tiny model, 64x64, 2 steps), best of {args.runs}: wall "
        f"{overhead['wall']:.3f} s, of which the engine's total {overhead['engine']:.3f} s; the CLI adds "
        f"{overhead['wall'] - overhead['engine']:.3f} s to every image (start-up and imports, the checks "
        "of its flags, the trip, saving, exit).",
        "",
        f"One {PNG_BYTES / 1e6:.1f} MB PNG from the server's stream into the CLI's hands (best of {args.runs}):",
        "",
        "| client | ms |",
        "| --- | --- |",
        *(f"| {label} | {seconds * 1e3:.1f} |" for label, seconds in transfers.items()),
    ]
    print("\n".join(rows))
    if args.write:
        replace_section("CLI start-up (bench/cli_startup.py)", "\n".join(rows))


if __name__ == "__main__":
    main()
