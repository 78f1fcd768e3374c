"""Pulling models stored the way ollama stored image models: converted on the way, the same images after.

The registry is real; the models are the tiny Z-Image model re-stored in ollama's layout
(tests/fixtures/ollama_layout.py, following ollama's x/create and x/imagegen sources).
"""

import json

import numpy as np
import pytest

from ollama_img import load_pipeline
from ollama_img.errors import UserError
from ollama_img.quantization import TYPES
from ollama_img.store import Layer, Store, import_folder, inspect_folder, write_bytes_blob
from ollama_img.store.additions import licenses_of
from ollama_img.store.blobs import fsync_dir
from ollama_img.store.manifest import encode_manifest
from ollama_img.transfer.registry.pull import pull_model
from ollama_img.transfer.registry.push import push_model
from tests.conftest import assert_store_consistent
from tests.fixtures.ollama_layout import write_ollama_model

ARGS = dict(width=32, height=32, steps=2, seed=5)


@pytest.fixture(scope="module")
def source(tiny_folder, tmp_path_factory) -> Store:
    store = Store(tmp_path_factory.mktemp("ollama-source"))
    import_folder(store, "tiny", inspect_folder(tiny_folder))
    import_folder(store, "tiny-int8", inspect_folder(tiny_folder), quantize=TYPES["int8"])
    return store


def image(store: Store, name: str) -> np.ndarray:
    return np.asarray(load_pipeline(name, store=store).generate("a blue door", **ARGS))


@pytest.fixture(scope="module")
def native_images(source) -> dict[str, np.ndarray]:
    return {name: image(source, name) for name in ("tiny", "tiny-int8")}


def tensor_digests(store: Store, name: str) -> dict[str, str]:
    return {layer.name: layer.digest for layer in store.manifest(name).layers if layer.is_tensor}


@pytest.mark.parametrize("native", ["tiny", "tiny-int8"])
def test_an_ollama_image_model_is_converted_and_makes_the_same_images(
    source, native_images, registry, tmp_path, native
):
    """bf16 with tensors keyed both ways ollama keyed them (by name, and `data` as the first releases
    did); int8 in ollama's quantized-weight layout."""
    name = f"{registry.host}/x/{native}-ollama:latest"
    write_ollama_model(source, native, name, data_keys=250, license="Apache License 2.0\n")  # of 376 tensors
    push_model(source, name, parallel=8)
    dest = Store(tmp_path / "dest")
    result = pull_model(dest, name, parallel=8)
    assert result.converted_from == "ollama"
    converted = dest.manifest(name)
    assert converted.config.format == "diffusers" and converted.config.architecture == "ZImagePipeline"
    # every tensor blob is byte for byte the one `create` wrote (quantized ones: the same packed bytes,
    # with ollama-img's names and metadata again), and the ollama-layout blobs were freed
    assert tensor_digests(dest, name) == tensor_digests(source, native)
    assert {p.name for p in dest.blobs_dir.glob("sha256-*")} == {
        d.replace(":", "-") for d in converted.digests()
    }
    assert_store_consistent(dest)
    if native == "tiny-int8":
        record = converted.config.quantization
        assert (record.type, record.mode, record.bits, record.group_size) == (
            "int8",
            "affine",
            8,
            64,
        )
        assert record.tensors == source.manifest(native).config.quantization.tensors
    assert licenses_of(dest, converted) == ("Apache License 2.0\n",)  # kept, as `show --license` reads it
    index = json.loads(dest.blob_path(converted.layer("model_index.json").digest).read_bytes())
    assert index["_class_name"] == "ZImagePipeline" and "parameter_count" not in index
    assert np.array_equal(image(dest, name), native_images[native])


def test_an_ollama_language_model_is_refused_before_any_weight_is_fetched(source, registry, tmp_path):
    name = f"{registry.host}/library/some-llm:latest"
    with source.writing():
        weights = write_bytes_blob(source.blobs_dir, b"GGUF" + bytes(64))
        config = write_bytes_blob(source.blobs_dir, json.dumps({"model_format": "gguf"}).encode())
        fsync_dir(source.blobs_dir)
        layers = [Layer("", weights.digest, weights.size, "application/vnd.ollama.image.model")]
        source.write_manifest(name, encode_manifest(layers, config.digest, config.size))
    push_model(source, name)
    since = registry.log_size()
    with pytest.raises(UserError, match="is an ollama language model \\(GGUF weights\\), not an image model"):
        pull_model(Store(tmp_path / "dest"), name)
    assert registry.requests("GET", f"/blobs/{weights.digest}", since=since) == 0
    assert not (tmp_path / "dest").exists()
