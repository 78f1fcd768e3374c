"""`create`, `list`, `show`, `rm`, `cp`: commands that work on the model store alone (no engine; MLX only to quantize).

The store and rich are imported inside the commands that use them: every command module is imported
for `--help` and `ps` too, which must start fast.
"""

from __future__ import annotations

import datetime
import json
import textwrap
import time
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from ollama_img.cli.app import app
from ollama_img.cli.transfer_progress import TransferDisplay
from ollama_img.errors import UserError
from ollama_img.formatting import human_age, human_bytes, human_count, table
from ollama_img.names import ModelName
from ollama_img.quantization import TYPES, parse_quant_type

if TYPE_CHECKING:
    from ollama_img.models.interface import Capabilities
    from ollama_img.store.config import QuantizationRecord


@app.command()
def create(
    name: str = typer.Argument(..., help="Model name: [host/][namespace/]model[:tag]."),
    file: Path = typer.Option(
        None,
        "-f",
        "--file",
        help="A Modelfile, or a diffusers model folder to import (a folder holding a file named Modelfile: "
        "that Modelfile). Default: the current folder.",
    ),
    source_model: str = typer.Option(
        None, "--from", help="Make NAME from a model already in the store (with --quantize)."
    ),
    quantize: str = typer.Option(
        None,
        "-q",
        "--quantize",
        help="Quantize the weights the model family's rule names (show lists it): fp8 (= mxfp8), int8, "
        "int4, nvfp4 or mxfp4.",
    ),
):
    """Import a diffusers model folder into the store under NAME, build one from a Modelfile, or quantize a
    stored model."""
    from ollama_img.store import Store

    model = ModelName.parse(name)
    quant = parse_quant_type(quantize) if quantize is not None else None
    store = Store()
    if source_model is not None:
        if file is not None:
            raise UserError("give either -f FOLDER or --from MODEL, not both")
        if quant is None:
            raise UserError(
                "--from needs --quantize TYPE (to give a model a second name, use 'ollama-img cp')"
            )
        plan, additions = _from_stored(store, ModelName.parse(source_model))
    else:
        source = file if file is not None else Path.cwd()
        modelfile = _modelfile_at(source)
        if modelfile is not None:
            _create_from_modelfile(store, model, modelfile, quant)
            return
        from ollama_img.store import inspect_folder

        plan, additions = inspect_folder(source), None
    _import(store, model, plan, quant, additions)


def _modelfile_at(source: Path) -> Path | None:
    """The Modelfile `-f` names: the file itself, or a folder's `Modelfile`; None for a model folder."""
    from ollama_img.modelfile import FILE_NAME

    source = source.expanduser()
    if not source.exists():
        raise UserError(f"{source} does not exist: -f takes a Modelfile or a model folder")
    if source.is_dir():
        inside = source / FILE_NAME
        return inside if inside.is_file() else None
    return source


def _from_stored(store, source: ModelName):
    """`create --from`: the stored model's weights to quantize, and what it adds to them, carried over."""
    from ollama_img.store import plan_from_model
    from ollama_img.store.additions import Additions, inherited

    plan = plan_from_model(store, source)
    manifest = store.manifest(source)
    kept = inherited(store, manifest)
    additions = Additions(kept.adapters, kept.params, kept.licenses, base=manifest.config.base)
    return plan, additions if additions != Additions() else None


def _create_from_modelfile(store, model: ModelName, path: Path, quant) -> None:
    from ollama_img.modelfile import read_modelfile
    from ollama_img.store.from_modelfile import derive, prepare

    recipe = prepare(store, read_modelfile(path), quantize=quant is not None)
    if recipe.plan is not None:
        _import(store, model, recipe.plan, quant, recipe.additions)
        return
    started = time.monotonic()
    result = derive(store, model, recipe.base, recipe.additions)
    _print_created(result, time.monotonic() - started)


def _import(store, model: ModelName, plan, quant, additions) -> None:
    from ollama_img.store import import_folder

    if quant is not None:
        from ollama_img.backend import require_mlx

        plan.architecture.quantization_rule()
        require_mlx()  # quantizing runs MLX: fail before the store is touched if it cannot
    started = time.monotonic()
    header = (
        f"importing '{model}' from {plan.origin}: {plan.tensor_count} tensors, {human_bytes(plan.tensor_bytes)}"
        + (f", quantizing to {quant.name}" if quant else "")
    )
    with TransferDisplay(header) as display:
        phase = "quantizing" if quant else "importing"
        display.start(phase, plan.tensor_bytes, plan.tensor_count, unit="tensors", announce=False)
        result = import_folder(
            store, model, plan, progress=display.import_callback(), quantize=quant, additions=additions
        )
    _print_created(result, time.monotonic() - started)


def _print_created(result, elapsed: float) -> None:
    freed = f"; freed {human_bytes(result.bytes_freed)} the replaced model used" if result.bytes_freed else ""
    config = result.manifest.config
    extras = [f"{len(config.adapters)} adapter(s)"] if config.adapters else []
    extras += [f"{len(config.params)} parameter(s)"] if config.params else []
    print(
        f"created '{result.name}' in {elapsed:.1f}s: {result.tensors} tensors, "
        + "".join(f"{extra}, " for extra in extras)
        + f"{human_bytes(result.bytes)}, {result.new_blobs} new blobs, {result.reused_blobs} reused blobs{freed}"
    )


@app.command("list")
def list_models():
    """List the models in the store."""
    from ollama_img.store import Store
    from ollama_img.store.verify import missing_blobs

    rows = [["NAME", "ID", "FAMILY", "SIZE", "MODIFIED"]]
    store = Store()
    for entry in store.list():
        if entry.manifest is None:
            rows.append([str(entry.name), "?", "?", "?", f"damaged: {entry.problem}"])
            continue
        missing = missing_blobs(store, entry.manifest)
        rows.append(
            [
                str(entry.name),
                entry.manifest.id,
                entry.manifest.config.family or "?",
                human_bytes(entry.manifest.total_size),
                f"damaged: {_missing_summary(missing)}" if missing else human_age(entry.modified),
            ]
        )
    print(table(rows))


def _missing_summary(missing) -> str:
    return f"{len(missing)} blob(s) missing or truncated; re-create it or pull it again"


@app.command()
def show(
    name: str = typer.Argument(..., help="Model name."),
    as_json: bool = typer.Option(False, "--json", help="Print the model's description as JSON."),
    as_modelfile: bool = typer.Option(
        False, "--modelfile", help="Print a Modelfile that recreates the model (create -f)."
    ),
):
    """Show a model's architecture, parameters, quantization, capabilities, memory, components, adapters
    and default parameters."""
    from ollama_img.engine.catalog import memory_report
    from ollama_img.store import Store
    from ollama_img.store.additions import licenses_of
    from ollama_img.store.verify import missing_blobs

    model = ModelName.parse(name)
    store = Store()
    manifest = store.manifest(model)
    if as_modelfile:
        from ollama_img.store.from_modelfile import modelfile_of

        print(modelfile_of(store, manifest), end="")
        return
    modified = store.modified(model)
    config = manifest.config
    missing = missing_blobs(store, manifest)
    licenses = licenses_of(store, manifest, strict=False)
    if as_json:
        doc = {
            "name": str(model),
            "id": manifest.id,
            "digest": manifest.digest,
            "size": manifest.total_size,
            "modified_at": datetime.datetime.fromtimestamp(modified, datetime.UTC).isoformat(),
            "layers": len(manifest.layers),
            "config": config.to_json(),
            "memory": memory_report(store, str(model)),
            "parameters": dict(config.params),
            "adapters": [adapter.to_json() for adapter in config.adapters],
            "license": list(licenses),
            "damaged_layers": [{"name": p.layer, "digest": p.digest, "problem": p.problem} for p in missing],
        }
        print(json.dumps(doc, indent=2))
        return
    if missing:
        more = ", ..." if len(missing) > 3 else ""
        print(f"  Damaged: {_missing_summary(missing)} ({', '.join(p.layer for p in missing[:3])}{more})")
        print()
    print("  Model")
    record = config.quantization
    quantization, quantization_details = _quantization_rows(record)
    details = [
        ("architecture", str(config.architecture)),
        ("family", str(config.family)),
        ("parameters", human_count(config.parameter_count or 0)),
        ("quantization", quantization),
        ("size", human_bytes(manifest.total_size)),
        ("id", manifest.id),
    ]
    print(_indent(table([[k, v] for k, v in details]), 4))
    if quantization_details:
        print()
        print("  Quantization")
        print(_indent(_wrapped_table(quantization_details), 4))
    if config.capabilities is not None:
        print()
        print("  Capabilities")
        print(_indent(table([[k, v] for k, v in _capability_rows(config.capabilities)]), 4))
    memory = memory_report(store, str(model))
    if memory is not None:
        print()
        print(
            f"  Memory ({memory['width']}x{memory['height']}, estimated for {_DEVICE_NAMES[memory['device']]})"
        )
        print(_indent(_wrapped_table(_memory_rows(memory)), 4))
    print()
    print("  Components")

    def quantized_as(component: str) -> list[str]:
        return [record.type] if record is not None and record.tensors.get(component) else []

    rows = [
        [
            component,
            info.class_name or "-",
            human_count(info.parameters) if info.parameters else "-",
            human_bytes(info.size or 0),
            ", ".join([*(info.dtypes or ()), *quantized_as(component)]) or "-",
        ]
        for component, info in config.components.items()
    ]
    if rows:
        print(_indent(table(rows), 4))
    _print_additions(config, licenses)


def _print_additions(config, licenses: tuple[str, ...]) -> None:
    """What a Modelfile added: adapters (name, short digest, scale), parameters and the license."""
    from ollama_img.modelfile import parameters_text

    if config.adapters:
        print()
        print("  Adapters")
        rows = [
            [a.name or "-", a.digest.removeprefix("sha256:")[:12], f"scale {a.scale:g}"]
            for a in config.adapters
        ]
        print(_indent(table(rows), 4))
    if config.params:
        print()
        print("  Parameters")
        print(
            _indent(
                _wrapped_table(
                    [tuple(line.split(" ", 1)) for line in parameters_text(config.params).splitlines()]
                ),
                4,
            )
        )
    if licenses:
        print()
        print("  License")
        for text in licenses:
            lines = text.strip().splitlines() or [""]
            more = f" ({len(lines)} lines; show --modelfile prints it whole)" if len(lines) > 2 else ""
            print(_indent("\n".join(lines[:2]) + more, 4))


def _quantization_rows(record: QuantizationRecord | None) -> tuple[str, list[tuple[str, str]]]:
    """What `show` prints for the quantization: a short value and detail rows (type, tensors, rule)."""
    if record is None:
        return "none", []
    known = TYPES.get(record.type)
    detail = f"{record.mode}, {record.bits} bits, groups of {record.group_size}"
    rows = [("type", f"{record.type}: {detail}" + (f" ({known.summary})" if known else ""))]
    total = sum(record.tensors.values())
    per = ", ".join(f"{component} {n}" for component, n in record.tensors.items())
    rows.append(("tensors", f"{total} quantized ({per})" if per else "none quantized"))
    if record.rule:
        rows.append(("rule", record.rule))
    return record.type, rows


_DEVICE_NAMES = {"cuda": "an NVIDIA GPU", "metal": "Apple silicon", "cpu": "the CPU"}
_RESIDENCY_ROWS = {
    "resident": "everything resident",
    "encoders on demand": "text encoder on demand",
    "one stage at a time": "one stage at a time",
}


def _memory_rows(memory: dict) -> list[tuple[str, str]]:
    """The least memory the model needs per residency, then its plan within the user's budget."""
    rows = [
        (_RESIDENCY_ROWS.get(r, r), f"{human_bytes(need)} or more") for r, need in memory["needs"].items()
    ]
    if "plan" in memory:
        plan = memory["plan"]
        budget = human_bytes(plan["budget"]["bytes"])
        rows.append(
            (f"within {budget}", f"{'; '.join(plan['summary'])} (peak about {human_bytes(plan['peak'])})")
        )
    elif "error" in memory:
        rows.append(("within the budget", memory["error"]))
    return rows


def _capability_rows(capabilities: Capabilities) -> list[tuple[str, str]]:
    sizes = capabilities.sizes
    options = [
        label
        for label, supported in (
            ("guidance", capabilities.guidance),
            ("negative prompt", capabilities.negative_prompt),
            ("start image and strength", capabilities.image_input),
            ("mask", capabilities.mask),
            (f"up to {capabilities.reference_images} reference images", capabilities.reference_images),
            ("TeaCache", capabilities.teacache),
            ("LoRA", capabilities.lora),
        )
        if supported
    ]
    return [
        ("sizes", f"multiples of {sizes.unit}, up to {sizes.max_width}x{sizes.max_height}"),
        ("options", ", ".join(options) or "none"),
    ]


@app.command()
def rm(names: list[str] = typer.Argument(..., help="Model names to remove.")):
    """Remove models, and every blob no remaining model uses."""
    from ollama_img.store import Store

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
    from ollama_img.store import Store

    src, dst = ModelName.parse(source), ModelName.parse(destination)
    Store().copy(src, dst)
    print(f"copied '{src}' to '{dst}'")


def _wrapped_table(rows: list[tuple[str, str]], width: int = 100) -> str:
    """Two columns, long values wrapped under their column (the quantization rule is a paragraph)."""
    key_width = max(len(key) for key, _ in rows) + 4
    lines = []
    for key, value in rows:
        wrapped = textwrap.wrap(value, width - key_width) or [""]
        lines.append(key.ljust(key_width) + wrapped[0])
        lines += [" " * key_width + more for more in wrapped[1:]]
    return "\n".join(lines)


def _indent(text: str, n: int) -> str:
    return "\n".join(" " * n + line for line in text.splitlines())
