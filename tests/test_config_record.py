"""The config blob as a typed record: written by create, read back the same; blobs of older versions
(no capabilities) still read, show, load and quantize; malformed capabilities are one clear line."""

import json

import numpy as np
import pytest

from ollama_img.store import Store, import_folder, inspect_folder, write_bytes_blob
from ollama_img.store.config import ModelConfig


def _repoint_config(store: Store, name: str, doc: dict) -> None:
    """Give the model a config blob with exactly `doc` in it (what another version wrote)."""
    blob = write_bytes_blob(store.blobs_dir, json.dumps(doc, indent=2).encode())
    path = store.manifest_path(name)
    manifest = json.loads(path.read_bytes())
    manifest["config"].update(digest=blob.digest, size=blob.size)
    path.write_text(json.dumps(manifest, indent=2))


@pytest.fixture
def created(store, tiny_folder):
    return import_folder(store, "z-image", inspect_folder(tiny_folder)).manifest


def test_the_record_round_trips_through_its_blob(store, created):
    blob = json.loads(store.blob_path(created.config_digest).read_bytes())
    assert ModelConfig.from_json(blob) == created.config == store.manifest("z-image").config
    assert ModelConfig.from_json({**blob, "a_later_field": {"steps": 4}}) == created.config  # ignored
    assert "params" not in blob and "adapters" not in blob and "base" not in blob  # none from a folder


def test_a_blob_written_before_capabilities_still_works(store, created, cli, tiny_folder):
    old = created.config.to_json()
    del old["image_capabilities"]  # exactly what the previous version wrote
    _repoint_config(store, "z-image", old)
    manifest = store.manifest("z-image")
    assert manifest.config.capabilities == created.config.capabilities  # derived from its config files
    shown = cli("show", "z-image")
    assert shown.code == 0 and "multiples of 16, up to 8192x8192" in shown.out
    quantized = cli("create", "z-int8", "--from", "z-image", "-q", "int8")
    assert quantized.code == 0, quantized.err
    assert store.manifest("z-int8").config.capabilities == created.config.capabilities

    from ollama_img import load_pipeline

    pipe = load_pipeline("z-image", store=store)
    fresh = load_pipeline(tiny_folder)
    kwargs = dict(width=32, height=32, steps=2, seed=3)
    assert np.array_equal(
        np.asarray(pipe.generate("a fox", **kwargs)), np.asarray(fresh.generate("a fox", **kwargs))
    )


@pytest.mark.parametrize(
    ("capabilities", "problem"),
    [
        ("all", "capabilities 'all', not an object"),
        ({"sizes": {"unit": 16}}, "capability sizes"),
        ({"sizes": {"unit": 16, "max_width": 64, "max_height": 64}, "mask": 1}, "capability mask 1"),
    ],
)
def test_malformed_capabilities_are_a_damaged_model(store, created, cli, capabilities, problem):
    _repoint_config(store, "z-image", {**created.config.to_json(), "image_capabilities": capabilities})
    shown = cli("show", "z-image")
    assert shown.code == 1 and shown.err.count("\n") == 1
    assert shown.err.startswith("Error: model z-image:latest is damaged: its config blob has")
    assert problem in shown.err and "re-create the model" in shown.err
