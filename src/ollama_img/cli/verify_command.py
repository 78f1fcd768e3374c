"""`ollama-img verify [NAME...]`: hash every blob of the models (all of them by default) against its name.

Loading hashes only blobs that changed since they were last hashed (see `store.verify`); this reads
everything, so it also finds damage that left the files' metadata as it was (a failing disk). Exit 1
when any model is damaged.
"""

import time

import typer

from ollama_img.cli.app import app
from ollama_img.cli.completion import complete_model_names
from ollama_img.errors import UserError
from ollama_img.formatting import human_bytes
from ollama_img.names import ModelName


@app.command()
def verify(
    names: list[str] | None = typer.Argument(
        None, metavar="[NAME]...", help="Models to check (default: all).", autocompletion=complete_model_names
    ),
):
    """Check that every blob of the models matches its digest (reads them all)."""
    from ollama_img.store import Store
    from ollama_img.store.verify import blob_refs, check_blobs

    store = Store()
    damaged = 0
    if names:
        manifests = [store.manifest(ModelName.parse(n)) for n in names]
    else:
        entries = store.list()
        if not entries:
            print("no models in the store")
            return
        manifests = []
        for entry in entries:
            if entry.manifest is None:
                print(f"{entry.name}: damaged: {entry.problem}")
                damaged += 1
            else:
                manifests.append(entry.manifest)
    for manifest in manifests:
        started = time.monotonic()
        refs = blob_refs(manifest)
        problems = check_blobs(store, refs, rehash=True)
        if problems:
            damaged += 1
            print(f"{manifest.name}: damaged: {len(problems)} of {len(refs)} blobs unusable", flush=True)
            for problem in problems:
                print(f"  {problem}")
        else:
            took = time.monotonic() - started
            size = human_bytes(manifest.total_size)
            print(f"{manifest.name}: ok ({len(refs)} blobs, {size}, hashed in {took:.1f}s)", flush=True)
    if damaged:
        raise UserError(f"{damaged} damaged model(s): re-create them (ollama-img create) or pull them again")
