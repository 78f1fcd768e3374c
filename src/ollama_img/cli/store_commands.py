"""`create`, `list`, `show`, `rm`, `cp`: commands that work on the model store alone (no engine, no MLX)."""

import datetime
import json
import sys
import time
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from ollama_img.cli.app import app
from ollama_img.cli.formatting import human_age, human_bytes, human_count, table
from ollama_img.names import ModelName
from ollama_img.store import ImportPlan, Store, import_folder, inspect_folder


@app.command()
def create(
    name: str = typer.Argument(..., help="Model name: [host/][namespace/]model[:tag]."),
    folder: Path = typer.Option(
        None, "-f", "--file", help="The diffusers model folder to import (default: the current folder)."
    ),
):
    """Import a diffusers model folder into the store under NAME."""
    model = ModelName.parse(name)
    plan = inspect_folder(folder if folder is not None else Path.cwd())
    store = Store()
    started = time.monotonic()
    with _ImportProgress(model, plan) as progress:
        result = import_folder(store, model, plan, progress=progress)
    elapsed = time.monotonic() - started
    freed = f"; freed {human_bytes(result.bytes_freed)} the replaced model used" if result.bytes_freed else ""
    print(
        f"created '{result.name}' in {elapsed:.1f}s: {result.tensors} tensors, {human_bytes(result.bytes)}, "
        f"{result.new_blobs} new blobs, {result.reused_blobs} reused blobs{freed}"
    )


@app.command("list")
def list_models():
    """List the models in the store."""
    rows = [["NAME", "ID", "SIZE", "MODIFIED"]]
    for entry in Store().list():
        if entry.manifest is None:
            rows.append([str(entry.name), "?", "?", f"damaged: {entry.problem}"])
            continue
        rows.append(
            [
                str(entry.name),
                entry.manifest.id,
                human_bytes(entry.manifest.total_size),
                human_age(entry.modified),
            ]
        )
    print(table(rows))


@app.command()
def show(
    name: str = typer.Argument(..., help="Model name."),
    as_json: bool = typer.Option(False, "--json", help="Print the model's description as JSON."),
):
    """Show a model's architecture, parameters, quantization and components."""
    model = ModelName.parse(name)
    store = Store()
    manifest = store.manifest(model)
    modified = store.modified(model)
    config = manifest.config
    if as_json:
        doc = {
            "name": str(model),
            "id": manifest.id,
            "digest": manifest.digest,
            "size": manifest.total_size,
            "modified_at": datetime.datetime.fromtimestamp(modified, datetime.UTC).isoformat(),
            "layers": len(manifest.layers),
            "config": config,
        }
        print(json.dumps(doc, indent=2))
        return
    print("  Model")
    details = [
        ("architecture", str(config.get("architecture"))),
        ("family", str(config.get("family"))),
        ("parameters", human_count(int(config.get("parameter_count") or 0))),
        ("quantization", _quantization_text(config.get("quantization"))),
        ("size", human_bytes(manifest.total_size)),
        ("id", manifest.id),
    ]
    print(_indent(table([[k, v] for k, v in details]), 4))
    print()
    print("  Components")
    rows = [
        [
            component,
            str(info.get("class") or "-"),
            human_count(info.get("parameters") or 0) if info.get("parameters") else "-",
            human_bytes(int(info.get("size") or 0)),
            ", ".join(info.get("dtypes") or []) or "-",
        ]
        for component, info in (config.get("components") or {}).items()
    ]
    if rows:
        print(_indent(table(rows), 4))


@app.command()
def rm(names: list[str] = typer.Argument(..., help="Model names to remove.")):
    """Remove models, and every blob no remaining model uses."""
    removal = Store().remove([ModelName.parse(n) for n in names])
    for name in removal.removed:
        print(f"deleted '{name}'")
    if removal.blobs_removed:
        print(f"freed {human_bytes(removal.bytes_freed)} ({removal.blobs_removed} blobs)")
    else:
        print("freed nothing: other models still use all of its blobs")


@app.command()
def cp(
    source: str = typer.Argument(..., help="The existing model."),
    destination: str = typer.Argument(..., help="The new name."),
):
    """Copy a model to a new name (no blob is copied: both names share them)."""
    src, dst = ModelName.parse(source), ModelName.parse(destination)
    Store().copy(src, dst)
    print(f"copied '{src}' to '{dst}'")


def _quantization_text(quantization) -> str:
    if not quantization:
        return "none"
    if isinstance(quantization, dict):
        return ", ".join(f"{k}={v}" for k, v in quantization.items())
    return str(quantization)


def _indent(text: str, n: int) -> str:
    return "\n".join(" " * n + line for line in text.splitlines())


class _ImportProgress:
    """Progress of an import on stderr: a rich bar (bytes and tensors) on a terminal, else plain lines."""

    PLAIN_STEP = 10  # percent between plain lines

    def __init__(self, name: ModelName, plan: ImportPlan):
        self.plan = plan
        self.console = Console(stderr=True)
        self.interactive = self.console.is_terminal
        self.bytes_done = 0
        self.tensors_done = 0
        self._next_plain = self.PLAIN_STEP
        self._bar: Progress | None = None
        self._task = None
        self._header = (
            f"importing '{name}' from {plan.folder}: {plan.tensor_count} tensors, "
            f"{human_bytes(plan.tensor_bytes)}"
        )

    def __enter__(self):
        if self.interactive:
            self._bar = Progress(
                TextColumn("[bold]importing"),
                BarColumn(),
                DownloadColumn(),
                TextColumn("{task.fields[tensors]}/{task.fields[total_tensors]} tensors"),
                TransferSpeedColumn(),
                TimeRemainingColumn(),
                console=self.console,
            )
            self._bar.start()
            self._task = self._bar.add_task(
                "import", total=self.plan.tensor_bytes, tensors=0, total_tensors=self.plan.tensor_count
            )
        else:
            print(self._header, file=sys.stderr, flush=True)
        return self

    def __exit__(self, *exc):
        if self._bar is not None:
            self._bar.stop()

    def __call__(self, nbytes: int, ntensors: int):
        self.bytes_done += nbytes
        self.tensors_done += ntensors
        if self._bar is not None:
            self._bar.update(self._task, completed=self.bytes_done, tensors=self.tensors_done)
            return
        total = self.plan.tensor_bytes or 1
        percent = 100 * self.bytes_done // total
        if ntensors and percent >= self._next_plain:
            self._next_plain = (percent // self.PLAIN_STEP + 1) * self.PLAIN_STEP
            print(
                f"  {percent:3d}%  {human_bytes(self.bytes_done)} of {human_bytes(total)}, "
                f"{self.tensors_done}/{self.plan.tensor_count} tensors",
                file=sys.stderr,
                flush=True,
            )
