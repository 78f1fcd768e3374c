"""`pull` and `push`: models from Hugging Face and OCI registries, and to registries.

Cheap to import (the CLI imports every command module at start-up): httpx, huggingface_hub and rich
are imported inside the commands.
"""

import sys
import time

import typer

from ollama_img.cli.app import app
from ollama_img.cli.completion import complete_model_names
from ollama_img.errors import UserError
from ollama_img.names import ModelName

INSECURE_HELP = (
    "Allow a registry that speaks plain HTTP or whose TLS certificate does not verify "
    "(loopback registries may use plain HTTP without it)."
)


@app.command()
def pull(
    name: str = typer.Argument(
        ...,
        metavar="NAME",
        help="hf.co/ORG/REPO[:REVISION] (Hugging Face) or [HOST/]NAMESPACE/MODEL[:TAG] (a registry).",
    ),
    as_name: str = typer.Option(
        None, "--as", help="Store a Hugging Face model under this name (default: hf.co/org/repo:revision)."
    ),
    quantize: str = typer.Option(
        None,
        "-q",
        "--quantize",
        help="Quantize a Hugging Face model while importing it: fp8, int8, int4, nvfp4, mxfp4.",
    ),
    insecure: bool = typer.Option(False, "--insecure", help=INSECURE_HELP),
):
    """Download a model from Hugging Face or a registry into the store."""
    from ollama_img.transfer.targets import HubRef, parse_target

    target = parse_target(name)
    if isinstance(target, HubRef):
        pull_hub(target, as_name, quantize)
        return
    if as_name is not None or quantize is not None:
        raise UserError(
            "--as and --quantize are for Hugging Face models; after pulling from a registry use "
            "'ollama-img cp' or 'ollama-img create NAME --from MODEL --quantize TYPE'"
        )
    pull_registry(target, insecure)


@app.command()
def push(
    name: str = typer.Argument(
        ...,
        metavar="NAME",
        help="HOST/NAMESPACE/MODEL[:TAG]: the registry is the host.",
        autocompletion=complete_model_names,
    ),
    insecure: bool = typer.Option(False, "--insecure", help=INSECURE_HELP),
):
    """Upload a model to the registry its name names (copy it to such a name first with 'cp')."""
    from ollama_img.cli.transfer_progress import TransferDisplay
    from ollama_img.formatting import human_bytes
    from ollama_img.store import Store
    from ollama_img.transfer.registry.push import push_model
    from ollama_img.transfer.targets import HUB_HOSTS

    model = ModelName.parse(name)
    if model.host in HUB_HOSTS:
        raise UserError("push uploads to OCI registries; Hugging Face is not one")
    started = time.monotonic()
    with TransferDisplay(f"pushing '{model}' to {model.host}") as display:
        result = push_model(Store(), model, insecure=insecure, progress=display)
    print(
        f"pushed '{result.name}' in {time.monotonic() - started:.1f}s: {result.uploaded} blobs uploaded "
        f"({human_bytes(result.uploaded_bytes)}), {result.present} already on the registry, "
        f"{result.mounted} mounted from its other repositories"
    )


def pull_registry(name: ModelName, insecure: bool = False, out=None) -> None:
    from ollama_img.cli.transfer_progress import TransferDisplay
    from ollama_img.formatting import human_bytes
    from ollama_img.store import Store
    from ollama_img.transfer.registry.pull import pull_model

    started = time.monotonic()
    with TransferDisplay(f"pulling '{name}' from {name.host}") as display:
        result = pull_model(Store(), name, insecure=insecure, progress=display)
    converted = ", converted from ollama's layout" if result.converted_from else ""
    freed = f"; freed {human_bytes(result.bytes_freed)}" if result.bytes_freed else ""
    print(
        f"pulled '{result.name}' in {time.monotonic() - started:.1f}s: {result.fetched} of {result.blobs} blobs "
        f"downloaded ({human_bytes(result.fetched_bytes)}), {result.present} already in the store{converted}{freed}",
        file=out or sys.stdout,
    )


def pull_hub(ref, as_name: str | None = None, quantize: str | None = None, out=None) -> ModelName:
    from ollama_img.cli.transfer_progress import TransferDisplay
    from ollama_img.formatting import human_bytes
    from ollama_img.quantization import parse_quant_type
    from ollama_img.store import Store
    from ollama_img.transfer.hub import pull_from_hub

    quant = parse_quant_type(quantize) if quantize is not None else None
    name = ModelName.parse(as_name) if as_name is not None else ref.store_name(quant.name if quant else None)
    started = time.monotonic()
    with TransferDisplay(f"pulling {ref} as '{name}'") as display:

        def switch_to_import(plan):
            phase = f"quantizing to {quant.name}" if quant else "importing"
            display.start(phase, plan.tensor_bytes, plan.tensor_count, unit="tensors")

        result = pull_from_hub(
            Store(),
            ref,
            name,
            quantize=quant,
            progress=display,
            import_progress=display.import_callback(),
            before_import=switch_to_import,
        )
    imported = result.imported
    if result.offline:
        source = "all from the Hugging Face cache"
    else:
        cached = result.files - result.downloaded
        source = f"{result.downloaded} downloaded ({human_bytes(result.downloaded_bytes)}), {cached} from the cache"
    print(
        f"pulled '{name}' from {ref} (commit {result.commit[:12]}) in {time.monotonic() - started:.1f}s: "
        f"{result.files} files, {source}; {imported.tensors} tensors, {human_bytes(imported.bytes)}, "
        f"{imported.new_blobs} new blobs, {imported.reused_blobs} reused",
        file=out or sys.stdout,
    )
    return name


def pull_if_missing(text: str) -> None:
    """For `run`: a Hugging Face or registry model that is not in the store is pulled first, after asking.

    Only names that point somewhere (`hf.co/...`, or a name with a namespace or host) are offered; a bare
    name that is not in the store stays an unknown model, with the store's "did you mean" hints.
    """
    from ollama_img.store import Store
    from ollama_img.transfer.targets import HubRef, parse_target

    if "/" not in text:
        return
    try:
        target = parse_target(text)
    except UserError:
        return  # run reports a bad name itself
    name = target.store_name() if isinstance(target, HubRef) else target
    if Store().exists(name):
        return
    where = "Hugging Face" if isinstance(target, HubRef) else f"registry {target.host}"
    if not (sys.stdin.isatty() and sys.stderr.isatty()):
        raise UserError(f"model '{name}' is not in the store; pull it first: ollama-img pull {text}")
    if not typer.confirm(f"'{name}' is not in the store. Pull it from {where} now?", default=True, err=True):
        raise UserError(f"model '{name}' is not in the store (not pulled)")
    if isinstance(target, HubRef):  # stdout may be carrying PNG bytes: the summary goes to stderr
        pull_hub(target, out=sys.stderr)
    else:
        pull_registry(target, out=sys.stderr)
