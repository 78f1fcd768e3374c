"""How long `ollama-img --help`, `--version`, `ps` and `list` take to start and finish, as a person runs them.

    python bench/cli_startup.py [--runs 15] [--write]

Each command runs --runs times as its own process in a private world (temporary HOME, store with the
tiny model, runtime dir), with `ps` both with no engine and against a running one. Reported: the best
wall time and the best CPU time (user + system) of the process; on a machine shared with other work
the CPU time is the steadier figure. `python -c pass` and `import typer` give the floor under any
Typer CLI. With --write, the table replaces the "CLI start-up" section of bench/RESULTS.md.
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
        finally:
            world.close()

    rows = [
        f"Measured {date.today()} on {platform.machine()} ({cpu_model()}, {os.cpu_count()} cores, shared with "
        f"other work), Python {platform.python_version()}; best of {args.runs} runs, each its own process.",
        "",
        "| command | wall, s | CPU, s |",
        "| --- | --- | --- |",
        *(f"| {label} | {wall:.3f} | {cpu:.3f} |" for label, wall, cpu in results),
        "",
        f"Target: `ps`, `list` and `--help` under {TARGET} s.",
    ]
    print("\n".join(rows))
    if args.write:
        replace_section("CLI start-up (bench/cli_startup.py)", "\n".join(rows))


if __name__ == "__main__":
    main()
