"""`create NAME -f Modelfile`: a model made of its FROM's weights and what the Modelfile adds.

FROM a stored model: the new model names the same weight and file blobs (nothing is read or copied),
keeps the base's adapters, parameters and license, and adds the Modelfile's (its adapters after the
base's, its parameters over the base's, its license instead of the base's). FROM `sha256:<manifest
digest>`: the weights of that stored model alone. FROM a model folder: the folder is imported as
`create -f FOLDER` imports it. With `--quantize`, the weights are quantized on the way (a stored base
as `create --from` does).

Everything a Modelfile can get wrong is found before the store is touched, with its line (an ADAPTER
that does not fit the base's weights too: `models.lora.check_adapter`). Writing is
the importer's order under the store lock: blobs (each durable under its name), the config, the
manifest last; so a failure or a crash leaves no partial blob and no manifest naming a missing one.
"""

from __future__ import annotations

from dataclasses import dataclass

from ollama_img.errors import UserError
from ollama_img.modelfile import Modelfile, at_line, check_parameters
from ollama_img.models import architecture_for
from ollama_img.models.lora import check_adapter
from ollama_img.names import ModelName
from ollama_img.store.additions import (
    Additions,
    adapter_from_file,
    adapter_names,
    inherited,
    licenses_of,
    with_additions,
    write_additions,
)
from ollama_img.store.blobs import fsync_dir, is_digest, write_bytes_blob
from ollama_img.store.folder import ImportPlan, inspect_folder
from ollama_img.store.from_model import plan_from_model
from ollama_img.store.importer import ImportResult
from ollama_img.store.manifest import Manifest, encode_manifest
from ollama_img.store.store import Store
from ollama_img.store.verify import check_before_loading

_PATH_STARTS = (".", "/", "~")  # FROM text that can only be meant as a path


@dataclass(frozen=True)
class Recipe:
    """A checked Modelfile, ready to build."""

    additions: Additions
    plan: ImportPlan | None = None  # weights to import (a folder, or a stored model to quantize)
    base: Manifest | None = None  # else the stored model whose weight layers are reused as they are


def prepare(store: Store, modelfile: Modelfile, quantize: bool = False) -> Recipe:
    """Resolve FROM, check the parameters against its family and the adapters' files; a UserError
    naming the line otherwise. With `quantize`, the weights are to be imported again, quantized: the
    recipe then has a `plan` for `import_folder` (with `additions`), else a `base` for `derive`."""
    line = modelfile.base_line
    try:
        plan, base, kept = _resolve_from(store, modelfile)
        if plan is not None:
            capabilities, label = plan.capabilities, plan.origin
        else:
            architecture_for(base.config.architecture)  # a family this version runs
            capabilities, label = base.config.capabilities, f"model '{base.name}'"
            if capabilities is None:
                raise UserError(f"{label} records no capabilities; re-create it")
            if quantize:
                plan = plan_from_model(store, base.name)
    except UserError as exc:
        raise at_line(line, str(exc)) from None
    check_parameters(modelfile, capabilities, label)
    names = adapter_names(store, base)
    adapters = []
    fits = _adapter_check(plan, base) if modelfile.adapters else None
    for adapter in modelfile.adapters:
        try:
            adapters.append(adapter_from_file(store, adapter.path, adapter.scale, names))
            fits(adapter.path)
        except UserError as exc:
            raise at_line(adapter.line, str(exc)) from None
    additions = Additions(
        adapters=kept.adapters + tuple(adapters),
        params={**kept.params, **modelfile.params},
        licenses=modelfile.licenses or kept.licenses,
        base=kept.base,
    )
    return Recipe(additions, plan=plan, base=None if plan is not None else base)


def _adapter_check(plan: ImportPlan | None, base: Manifest | None):
    """`fits(path)`: a UserError naming the first key of the adapter at `path` that does not fit the
    model's weights (its layers' names and shapes, from headers: `models.lora.check_adapter`)."""
    if base is not None:
        architecture = architecture_for(base.config.architecture)
        component = architecture.lora.component if architecture.lora else None
        shapes = {
            layer.name.split("/", 1)[1]: tuple(layer.shape)
            for layer in base.component_layers(component)
            if layer.is_tensor and layer.shape is not None
        }
    else:
        architecture = plan.architecture
        component = architecture.lora.component if architecture.lora else None
        shapes = {
            t.name: t.shape
            for c in plan.components
            if c.name == component
            for s in c.shards
            for t in s.header.tensors
        }
    return lambda path: check_adapter(architecture, path, shapes)


def derive(store: Store, name: ModelName | str, base: Manifest, additions: Additions) -> ImportResult:
    """A model of `base`'s weight and file layers (the same blobs) and `additions`."""
    name = name if isinstance(name, ModelName) else ModelName.parse(name)
    check_before_loading(store, base)  # its blobs are reused: they must be what they claim
    weights = list(base.weight_layers())
    with store.writing():
        if any(not _present(store, layer) for layer in weights):
            raise UserError(
                f"model '{base.name}' lost blobs while this model was made from it; run create again"
            )
        added, new = write_additions(store, additions)
        layers = weights + added
        record = with_additions(base.config.weights_only(), additions, layers)
        config = write_bytes_blob(store.blobs_dir, record.encode())
        fsync_dir(store.blobs_dir)
        raw = encode_manifest(layers, config.digest, config.size)
        previous = store.write_manifest(name, raw)
    freed = store.free_replaced(previous, raw)
    new += config.new
    return ImportResult(
        name=name,
        manifest=Manifest(tuple(layers), record, config.digest, config.size, raw, name),
        tensors=sum(1 for layer in layers if layer.is_tensor),
        bytes=sum(layer.size for layer in layers),
        new_blobs=new,
        reused_blobs=len({layer.digest for layer in layers} | {config.digest}) - new,
        bytes_freed=freed,
    )


def _present(store: Store, layer) -> bool:
    try:
        return store.blob_path(layer.digest).stat().st_size == layer.size
    except FileNotFoundError:
        return False


def _resolve_from(store: Store, modelfile: Modelfile) -> tuple[ImportPlan | None, Manifest | None, Additions]:
    """FROM as a folder's import plan or a stored model, and what the new model keeps of the latter."""
    text = modelfile.base
    if is_digest(text):
        base = model_with_digest(store, text)
        if base is None:
            raise UserError(
                f"no model in the store has the digest {text} (FROM sha256:... names the weights of a stored "
                "model by its manifest digest)"
            )
        return None, base, Additions(base=base.config.base)  # its weights alone
    path = modelfile.base_path()
    if path.exists():
        if not path.is_dir():
            raise UserError(
                f"{path} is a file: FROM takes a model folder (diffusers layout) or a model in the store"
            )
        return inspect_folder(path), None, Additions()
    if text.startswith(_PATH_STARTS):
        raise UserError(f"model folder {path} does not exist")
    base = store.manifest(ModelName.parse(text))
    kept = inherited(store, base)
    return None, base, Additions(kept.adapters, kept.params, kept.licenses, base=str(base.name))


def model_with_digest(store: Store, digest: str) -> Manifest | None:
    """A stored model whose manifest has this digest (copies made by `cp` share it)."""
    for entry in store.list():
        if entry.manifest is not None and entry.manifest.digest == digest:
            return entry.manifest
    return None


def modelfile_of(store: Store, manifest: Manifest) -> str:
    """A Modelfile that `create` turns back into this model, the same manifest byte for byte.

    FROM is the model it was made from when that model, as it is now, gives these weights and a prefix
    of these adapters; else `sha256:<this model's manifest digest>`, which names its own weights. The
    ADAPTER lines name the adapter blobs in the store, as ollama's do."""
    from ollama_img.modelfile import render_modelfile

    config = manifest.config
    source, skip = manifest.digest, 0
    base = _reproducing_base(store, manifest)
    if base is not None:
        source, skip = str(base.name), len(base.config.adapters)
    adapters = [(str(store.blob_path(a.digest)), a.scale) for a in config.adapters[skip:]]
    comment = f"Modelfile of {manifest.name}, written by ollama-img show --modelfile"
    return render_modelfile(
        source, adapters, dict(config.params), list(licenses_of(store, manifest, strict=False)), comment
    )


def _reproducing_base(store: Store, manifest: Manifest) -> Manifest | None:
    """The model `manifest` was made from, if building on it again gives the same manifest."""
    config = manifest.config
    if config.base is None:
        return None
    try:
        base = store.manifest(config.base)
    except UserError:
        return None
    own = base.config
    return (
        base
        if base.weight_layers() == manifest.weight_layers()
        and own.weights_only() == config.weights_only()
        and config.adapters[: len(own.adapters)] == own.adapters
        and set(own.params) <= set(config.params)
        and (not licenses_of(store, base, strict=False) or licenses_of(store, manifest, strict=False))
        and str(base.name) == config.base
        else None
    )
