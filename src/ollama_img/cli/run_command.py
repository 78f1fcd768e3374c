"""`ollama-img run MODEL [PROMPT]`: generate with the engine (started if needed), show progress, save.

The prompt comes from the arguments, else from stdin when it is piped; with neither, on a terminal,
an interactive loop asks for one prompt per image (a path to an image file in a line is that prompt's
input image). `--image` files are the model's image input, whatever the model does with them: the
engine hands them over as its start image or its reference images. Ctrl-C closes the stream, which
cancels the job in the engine; nothing is saved and the exit status is 130.
"""

import base64
import contextlib
import dataclasses
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import typer

from ollama_img import viewer
from ollama_img.cli import outputs
from ollama_img.cli.app import OPTIONAL_VALUES, app
from ollama_img.cli.completion import complete_model_names
from ollama_img.cli.image_files import encoded, take_images
from ollama_img.cli.run_options import RunOptions
from ollama_img.engine.params import generate_params, parse_size
from ollama_img.errors import UserError
from ollama_img.names import ModelName
from ollama_img.options import (
    COUNT,
    GUIDANCE,
    HEIGHT,
    IMAGES,
    KEEP_ALIVE,
    LORAS,
    MASK,
    MAX_IMAGES,
    NEGATIVE_PROMPT,
    OPTIONS,
    SEED,
    STEPS,
    STRENGTH,
    TEACACHE,
    WIDTH,
    Option,
    check_sizes,
    check_supported,
    flag_name,
)
from ollama_img.teacache import DEFAULT_THRESHOLD

NS = 1e9
INTERACTIVE_HELP = """Available commands:
  /bye            Exit
  /?, /help       Show this help
Anything else is a prompt: one image per line. A path to a .png, .jpg or .webp file in the line
(/path/to/file, ./file, ~/file; escape spaces with \\ or quote the path) is its input image."""


def should_open(options: RunOptions, stdout_is_tty: bool) -> bool:
    """Open the viewer only for a person at a terminal with a display, and only when not told otherwise."""
    if options.no_open or options.json or options.output == outputs.STDOUT or not stdout_is_tty:
        return False
    return not viewer.disabled_by_env() and viewer.has_display()


def engine_events(body: dict) -> Iterator[dict]:
    """The engine's events for one request, starting the engine if none runs.

    An engine that exits (idle) just as we connect is started again, once. When the console entry sent
    this very request already (`cli.early_run`), its answer is the one read.
    """
    from ollama_img.cli import early_run
    from ollama_img.engine.client import EngineUnavailable, connect
    from ollama_img.paths import models_dir

    for attempt in range(2):
        with connect(start=True) as client:
            try:
                client.check_store(models_dir())
                sent = early_run.take({**body, "stream": True})  # the same request, sent at start-up
                with contextlib.closing(client.generate(body, sent)) as events:
                    yield from events
                return
            except EngineUnavailable:
                if attempt:
                    raise


def generate(options: RunOptions, prompt: str | None) -> dict:
    """Run one request with progress on stderr; returns the engine's final object.

    The progress display (rich) is imported once the first event is in, so that its import overlaps
    the engine's work instead of delaying the request."""
    progress = None
    try:
        with contextlib.closing(engine_events(options.request(prompt))) as events:
            for event in events:
                if event.get("done"):
                    continue
                if progress is None:
                    from ollama_img.cli.progress import make_progress

                    progress = make_progress(sys.stderr)
                progress.update(event)
    finally:
        if progress is not None:
            progress.close()
    return event  # the client raises unless the stream ends with the final object


def report(options: RunOptions, prompt: str, final: dict, paths: list[Path]):
    if options.json:
        seeds = final.get("seeds", [])
        summary = {
            "model": final.get("model"),
            "digest": final.get("digest"),
            "prompt": prompt,
            "paths": [str(p) for p in paths],
            "seeds": seeds,
            "images": [{"path": str(p), "seed": s} for p, s in zip(paths, seeds, strict=False)],
            "width": final.get("width"),
            "height": final.get("height"),
            "steps": final.get("steps"),
            "guidance": final.get("guidance"),
            "durations": {
                key: round(final.get(f"{key}_duration", 0) / NS, 4)
                for key in ("total", "load", "queue", "generate", "encode")
            },
        }
        print(json.dumps(summary))
        return
    stream = sys.stderr if options.output == outputs.STDOUT else sys.stdout
    for path in paths:
        print(f"Image saved to: {path}", file=stream, flush=True)


def generate_and_save(options: RunOptions, prompt: str):
    final = generate(options, prompt)
    pngs = final.get("pngs") or [base64.b64decode(b64) for b64 in final.get("images", [])]
    if not pngs:
        raise UserError("the engine returned no image")
    if options.output == outputs.STDOUT:
        sys.stdout.buffer.write(pngs[0])
        sys.stdout.buffer.flush()
        paths = []
    else:
        paths = outputs.save(pngs, final.get("seeds", []), options.model, options.output)
    report(options, prompt, final, paths)
    if paths and should_open(options, sys.stdout.isatty()):
        for path in paths:
            viewer.open_image(path)


def interactive(options: RunOptions):
    """`>>> ` prompts until /bye or Ctrl-D; Ctrl-C cancels the image being made, not the session."""
    if options.output is not None and not outputs.is_folder(options.output):
        raise UserError("in interactive mode -o must be a folder (each prompt makes a new file)")
    generate(options, None)  # load the model now (and fail now if it does not exist)
    while True:
        try:
            line = input(">>> ")
        except EOFError:
            print()
            return
        except KeyboardInterrupt:
            print("\nUse Ctrl + d or /bye to exit.")
            continue
        text = line.strip()
        if not text:
            continue
        if text in ("/bye", "/exit", "/quit"):
            return
        if text in ("/?", "/help"):
            print(INTERACTIVE_HELP)
            continue
        try:
            prompt, paths = take_images(text)
            if text.startswith("/") and prompt.split()[:1] == text.split()[:1]:  # not a path: a command
                print(f"Unknown command '{text.split()[0]}'. Type /? for help")
                continue
            generate_and_save(with_images(options, paths), prompt)
        except KeyboardInterrupt:
            print(file=sys.stderr)
        except UserError as exc:
            print(f"Error: {exc}", file=sys.stderr)


def with_images(options: RunOptions, paths: list[str]) -> RunOptions:
    """The options with these image files instead of --image's (none: unchanged)."""
    if not paths:
        return options
    images = [encoded(path, path) for path in paths]
    return dataclasses.replace(options, fields={**options.fields, IMAGES.field: images})


def build_options(
    model: str,
    *,
    size: str | None = None,
    output: str | None = None,
    no_open: bool = False,
    format_: str | None = None,
    **flags,
) -> RunOptions:
    """Check the flags before anything starts, so mistakes cost nothing. `flags` are run's parameters
    for the options table (`width`, `negative`, `count`, ...)."""
    if os.sep in model and Path(model).expanduser().is_dir():
        raise UserError(
            f"run takes a model name, not a folder; import it first: ollama-img create NAME -f {model}"
        )
    model = str(ModelName.parse(model))
    fields = {option.field: flags.pop(option.param, None) for option in OPTIONS}
    if flags:
        raise TypeError(f"unknown run options {sorted(flags)}")
    lora_specs = _lora_specs(fields.pop(LORAS.field) or [])
    fields[IMAGES.field] = [
        encoded(path, f"{IMAGES.flag} {path}") for path in fields[IMAGES.field] or []
    ] or None
    if fields[MASK.field] is not None:
        fields[MASK.field] = encoded(fields[MASK.field], f"{MASK.flag} {fields[MASK.field]}")
    if size is not None:
        if fields[WIDTH.field] is not None or fields[HEIGHT.field] is not None:
            raise UserError("use --size or --width/--height, not both")
        fields[WIDTH.field], fields[HEIGHT.field] = parse_size(size)
    if format_ is not None and format_ != "json":
        raise UserError(f"unsupported --format {format_!r}: the only format is json")
    if output == outputs.STDOUT and format_ == "json":
        raise UserError("-o - and --format json both write to stdout; choose one")
    if output == outputs.STDOUT and sys.stdout.isatty():
        raise UserError(
            "refusing to write PNG bytes to a terminal: redirect stdout (-o - > image.png) or pipe it"
        )
    options = RunOptions(model=model, fields=fields, output=output, no_open=no_open, json=format_ == "json")
    check_request(options)
    outputs.check_output(output, options.count)
    if lora_specs:
        options.fields[LORAS.field] = stored_loras(model, lora_specs)
    return options


def _lora_specs(texts: list[str]) -> list[tuple[str, float]]:
    """`--lora PATH[:SCALE]` values, parsed (the adapter code, and the model families it imports, only
    when there are some: a plain `run` starts sooner)."""
    if not texts:
        return []
    from ollama_img.adapters import parse_spec

    return [parse_spec(text, LORAS.flag) for text in texts]


def stored_loras(model: str, specs: list[tuple[str, float]]) -> list[dict]:
    """`--lora` files put in the store as adapter blobs, as the request names them (by digest): checked
    first against the model when this store has it (what it can do, its layers' names and shapes)."""
    from ollama_img.adapters import shapes_of_manifest
    from ollama_img.models import ARCHITECTURES
    from ollama_img.models.lora import check_adapter
    from ollama_img.store import Store
    from ollama_img.store.adapters import put_adapter

    store = Store()
    try:
        manifest = store.manifest(model)
    except UserError:
        manifest = None  # the engine (which may serve another store) answers for it
    architecture = ARCHITECTURES.get(manifest.config.architecture) if manifest else None
    if manifest is not None and manifest.config.capabilities is not None:
        check_supported(model, {LORAS.field: specs}, manifest.config.capabilities, flag_name)
    loras = []
    for path, scale in specs:
        where = f"{LORAS.flag} {path}"
        if not Path(path).expanduser().is_file():
            raise UserError(f"{where}: no such file")
        if architecture is not None and architecture.lora is not None:
            check_adapter(architecture, path, shapes_of_manifest(manifest, architecture.lora.component))
        loras.append({"digest": put_adapter(store, path).digest, "scale": scale})
    return loras


def check_request(options: RunOptions):
    """The engine's own checks on the request these flags make, naming the flags: the values, then (for
    a model in this store) what the model can do."""
    asked = generate_params(options.request("-"), options.model, "-", name=flag_name).asked()
    capabilities = _recorded_capabilities(options.model)
    if capabilities is not None:
        check_supported(options.model, asked, capabilities, flag_name)
        check_sizes(asked, capabilities)


def _recorded_capabilities(model: str):
    """The capabilities the store records for `model`; None when it is not there (or damaged): the
    engine, which may use another store, answers for it then."""
    from ollama_img.store import Store

    try:
        return Store().manifest(model).config.capabilities
    except UserError:
        return None


def _flag(option: Option, **extra):
    """run's typer option for an entry of the options table."""
    names = [option.flag, *([option.short] if option.short else [])]
    return typer.Option(None, *names, help=option.help, **extra)


OPTIONAL_VALUES["--teacache"] = str(DEFAULT_THRESHOLD)


@app.command("run")
def run(
    model: str = typer.Argument(
        ..., metavar="MODEL", help="Model name, e.g. z-image.", autocompletion=complete_model_names
    ),
    prompt: list[str] | None = typer.Argument(
        None,
        metavar="PROMPT",
        help="What the image should show. Read from stdin when piped; interactive when omitted.",
    ),
    width: int | None = _flag(WIDTH),
    height: int | None = _flag(HEIGHT),
    size: str | None = typer.Option(None, "--size", help="WIDTHxHEIGHT, e.g. 1024x768."),
    steps: int | None = _flag(STEPS),
    seed: int | None = _flag(SEED),
    guidance: float | None = _flag(GUIDANCE),
    negative: str | None = _flag(NEGATIVE_PROMPT),
    output: str | None = typer.Option(
        None, "--output", "-o", help="A file, a folder, or - for PNG bytes on stdout (default: this folder)."
    ),
    count: int = typer.Option(1, COUNT.flag, COUNT.short, min=1, max=MAX_IMAGES, help=COUNT.help),
    no_open: bool = typer.Option(False, "--no-open", help="Do not open the image in a viewer."),
    keepalive: str | None = _flag(KEEP_ALIVE),
    format_: str | None = typer.Option(
        None, "--format", help="json: print one JSON object (paths, seeds, timings)."
    ),
    teacache: float | None = _flag(TEACACHE, metavar="[THRESHOLD]"),
    image: list[str] | None = _flag(IMAGES, metavar="PATH"),
    mask: str | None = _flag(MASK, metavar="PATH"),
    strength: float | None = _flag(STRENGTH),
    lora: list[str] | None = _flag(LORAS, metavar="PATH[:SCALE]"),
):
    """Generate images from a prompt (starts the engine if needed)."""
    options = build_options(
        model,
        width=width,
        height=height,
        size=size,
        steps=steps,
        seed=seed,
        guidance=guidance,
        negative=negative,
        output=output,
        count=count,
        no_open=no_open,
        keepalive=keepalive,
        format_=format_,
        teacache=teacache,
        image=image,
        mask=mask,
        strength=strength,
        lora=lora,
    )
    from ollama_img import priming
    from ollama_img.cli.transfer_commands import pull_if_missing
    from ollama_img.memory.budget import user_budget

    user_budget()  # a malformed OLLAMA_IMG_GPU_MEMORY fails here, not in an engine that cannot start
    priming.policy()  # and OLLAMA_IMG_PRIME

    pull_if_missing(model)  # hf.co/... or a registry model not in the store: offered for pulling
    text = " ".join(prompt) if prompt else None
    if text is None and not sys.stdin.isatty():
        text = sys.stdin.read()
    if text is None:
        interactive(options)
        return
    if not text.strip():
        raise UserError("empty prompt: say what the image should show")
    generate_and_save(options, text.strip())
