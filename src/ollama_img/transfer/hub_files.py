"""Which files of a Hugging Face repository a pull needs: what `create` would import, nothing more.

model_index.json names the architecture; the architecture table (`ollama_img.models`) names each
component's files; a component's weights are `<stem>.safetensors`, or the index `<stem>.safetensors.index.json`
and exactly the shards its weight_map names. So duplicate variants (`*.fp16.safetensors`), `.bin`
weights, single-file checkpoints at the repository root, READMEs and images are never downloaded.
Missing files are found here, from the repository's file list, before any large download starts.
"""

from collections.abc import Callable
from pathlib import Path

from ollama_img.errors import UserError
from ollama_img.models import architecture_for
from ollama_img.store.folder import MODEL_INDEX, read_weight_map


def select_files(listing: set[str], local_path: Callable[[str], Path], label: str) -> list[str]:
    """The repository paths to download, in a stable order.

    `listing` holds every file path of the repository; `local_path(path)` gives a small file (the model
    index, a weights index) on disk, downloading it if needed.
    """
    if MODEL_INDEX not in listing:
        raise UserError(f"{label} has no {MODEL_INDEX}: ollama-img needs a model in the diffusers layout")
    index = _read_index(local_path(MODEL_INDEX), label)
    architecture = architecture_for(index.get("_class_name"))
    wanted = [MODEL_INDEX]
    for component in architecture.components:
        folder = component.name
        for file_name in component.required_files:
            path = f"{folder}/{file_name}"
            if path not in listing:
                raise UserError(f"{label} lacks {path}, which a {architecture.class_name} needs")
            wanted.append(path)
        wanted += [f"{folder}/{f}" for f in component.optional_files if f"{folder}/{f}" in listing]
        if component.weights:
            wanted += _weight_files(listing, local_path, folder, component.weights, label)
    return wanted


def _weight_files(listing: set[str], local_path, folder: str, stem: str, label: str) -> list[str]:
    single = f"{folder}/{stem}.safetensors"
    index = f"{folder}/{stem}.safetensors.index.json"
    if single in listing:
        return [single]
    if index in listing:
        weight_map = read_weight_map(local_path(index), f"{label}: {index}")
        shards = [f"{folder}/{shard}" for shard in sorted(set(weight_map.values()))]
        missing = [shard for shard in shards if shard not in listing]
        if missing:
            raise UserError(f"{label}: {index} names {missing[0]}, which the repository does not have")
        return [index, *shards]
    others = sorted(
        path for path in listing if path.startswith(f"{folder}/") and path.endswith((".safetensors", ".bin"))
    )
    hint = (
        f" (it has {', '.join(others[:3])}: ollama-img takes the plain safetensors weights only)"
        if others
        else ""
    )
    raise UserError(f"{label} has no {single} or {index}{hint}")


def _read_index(path: Path, label: str) -> dict:
    import json

    try:
        index = json.loads(path.read_bytes())
    except (UnicodeDecodeError, ValueError, OSError) as exc:
        raise UserError(f"{label}: cannot read its {MODEL_INDEX} ({exc})") from None
    if not isinstance(index, dict):
        raise UserError(f"{label}: its {MODEL_INDEX} is not a JSON object")
    return index
