"""`create`'s import: every tensor and file of the folder as a layer, the config blob, the manifest."""

import hashlib
import json
import math

import numpy as np
from safetensors import safe_open

from ollama_img.store import (
    JSON_MEDIA_TYPE,
    TENSOR_MEDIA_TYPE,
    TEXT_MEDIA_TYPE,
    Store,
    import_folder,
    inspect_folder,
)
from tests.conftest import assert_store_consistent, snapshot


def _source_tensors(folder):
    """{layer name: (dtype, shape, raw bytes)} read straight from the folder's safetensors files."""
    out = {}
    for path in sorted(folder.glob("*/*.safetensors")):
        with safe_open(path, framework="numpy") as f:
            raw = path.read_bytes()
            (n,) = np.frombuffer(raw[:8], dtype="<u8")
            header = json.loads(raw[8 : 8 + int(n)])
            for key in f.keys():  # noqa: SIM118 (safe_open has no __iter__)
                entry = header[key]
                begin, end = (8 + int(n) + o for o in entry["data_offsets"])
                out[f"{path.parent.name}/{key}"] = (entry["dtype"], tuple(entry["shape"]), raw[begin:end])
    return out


def test_manifest_fields_and_layers(store, tiny_folder):
    result = import_folder(store, "z-image", inspect_folder(tiny_folder))
    path = store.root / "manifests/registry.ollama.ai/library/z-image/latest"
    raw = path.read_bytes()
    doc = json.loads(raw)
    assert doc["schemaVersion"] == 2
    assert doc["mediaType"] == "application/vnd.docker.distribution.manifest.v2+json"
    assert doc["config"]["mediaType"] == "application/vnd.docker.container.image.v1+json"
    manifest = store.manifest("z-image")
    assert str(manifest.name) == str(result.manifest.name) == "z-image:latest"
    assert manifest.raw == raw == result.manifest.raw
    assert manifest.digest == "sha256:" + hashlib.sha256(raw).hexdigest()
    assert manifest.id == manifest.digest[7:19]

    layers = {layer.name: layer for layer in manifest.layers}
    assert len(layers) == len(manifest.layers)
    for layer in doc["layers"]:
        assert set(layer) >= {"mediaType", "digest", "size", "name"}
        assert store.blob_path(layer["digest"]).stat().st_size == layer["size"]
    to_q = layers["transformer/layers.0.attention.to_q.weight"]
    assert (to_q.media_type, to_q.dtype, to_q.shape) == (TENSOR_MEDIA_TYPE, "BF16", (64, 64))
    assert layers["text_encoder/model.layers.0.mlp.up_proj.weight"].shape == (48, 32)
    for name in (
        "model_index.json",
        "scheduler/scheduler_config.json",
        "text_encoder/config.json",
        "tokenizer/tokenizer.json",
        "tokenizer/tokenizer_config.json",
        "tokenizer/vocab.json",
        "transformer/config.json",
        "vae/config.json",
    ):
        assert layers[name].media_type == JSON_MEDIA_TYPE
        assert layers[name].dtype is None and layers[name].shape is None
        assert store.blob_path(layers[name].digest).read_bytes() == (tiny_folder / name).read_bytes()
    assert layers["tokenizer/merges.txt"].media_type == TEXT_MEDIA_TYPE
    assert not any(name.endswith(".index.json") for name in layers)
    assert manifest.layers[0].name == "model_index.json"

    sources = _source_tensors(tiny_folder)
    tensor_layers = [layer for layer in manifest.layers if layer.is_tensor]
    assert {layer.name for layer in tensor_layers} == set(sources)
    assert result.tensors == len(sources)
    assert result.new_blobs == len({layer.digest for layer in manifest.layers} | {manifest.config_digest})
    for layer in tensor_layers:
        dtype, shape, data = sources[layer.name]
        assert (layer.dtype, layer.shape) == (dtype, shape)
        blob = store.blob_path(layer.digest).read_bytes()
        (n,) = np.frombuffer(blob[:8], dtype="<u8")
        assert json.loads(blob[8 : 8 + int(n)])["data"]["shape"] == list(shape)
        assert blob[8 + int(n) :] == data
    assert_store_consistent(store)
    assert not list(store.root.rglob(".tmp-*"))


def test_config_blob_describes_the_model(store, tiny_folder):
    manifest = import_folder(store, "z-image", inspect_folder(tiny_folder)).manifest
    config = json.loads(store.blob_path(manifest.config_digest).read_bytes())
    assert config == store.manifest("z-image").config.to_json()
    assert config["architecture"] == "ZImagePipeline" and config["family"] == "z-image"
    assert config["format"] == "diffusers" and config["quantization"] is None
    assert config["image_capabilities"] == {
        "sizes": {"unit": 16, "max_width": 8192, "max_height": 8192},
        "guidance": True,
        "negative_prompt": True,
        "image_input": True,
        "mask": True,
        "reference_images": 0,
        "teacache": True,
        "lora": True,
    }
    sources = _source_tensors(tiny_folder)
    assert config["parameter_count"] == sum(math.prod(shape) for _, shape, _ in sources.values())
    assert config["total_size"] == sum(layer.size for layer in manifest.layers)
    components = config["components"]
    assert list(components) == ["scheduler", "text_encoder", "tokenizer", "transformer", "vae"]
    assert components["transformer"]["class"] == "ZImageTransformer2DModel"
    assert components["text_encoder"]["class"] == "Qwen3Model"
    assert components["transformer"]["dtypes"] == ["BF16"]
    assert components["tokenizer"]["parameters"] == 0 and components["tokenizer"]["dtypes"] == []
    for name, info in components.items():
        assert info["size"] == sum(layer.size for layer in manifest.component_layers(name))
        assert info["parameters"] == sum(
            math.prod(shape) for key, (_, shape, _) in sources.items() if key.startswith(name + "/")
        )


def test_f32_folder_with_sharded_text_encoder_and_template_file(store, tiny_folder_f32):
    manifest = import_folder(store, "z-image:f32", inspect_folder(tiny_folder_f32)).manifest
    names = {layer.name: layer for layer in manifest.layers}
    assert names["tokenizer/chat_template.jinja"].media_type == TEXT_MEDIA_TYPE
    assert "text_encoder/model.safetensors.index.json" not in names
    index = json.loads((tiny_folder_f32 / "text_encoder/model.safetensors.index.json").read_text())
    assert {f"text_encoder/{k}" for k in index["weight_map"]} == {
        layer.name for layer in manifest.component_layers("text_encoder") if layer.is_tensor
    }
    assert manifest.config.components["vae"].dtypes == ("F32",)
    assert {layer.dtype for layer in manifest.layers if layer.is_tensor} == {"F32"}


def test_same_folder_under_a_second_name_writes_no_new_blob(store, tiny_folder):
    plan = inspect_folder(tiny_folder)
    first = import_folder(store, "z-image", plan)
    blobs = sorted(p.name for p in store.blobs_dir.iterdir())
    second = import_folder(store, "other/z-image:v2", plan)
    assert second.new_blobs == 0
    assert second.reused_blobs == first.new_blobs + first.reused_blobs
    assert sorted(p.name for p in store.blobs_dir.iterdir()) == blobs
    assert second.manifest.digest == first.manifest.digest
    assert sorted(map(str, store.names())) == ["other/z-image:v2", "z-image:latest"]


def _change_scheduler(folder):
    config = json.loads((folder / "scheduler/scheduler_config.json").read_text())
    config["shift"] = 6.0
    (folder / "scheduler/scheduler_config.json").write_text(json.dumps(config))


def test_reimporting_a_changed_folder_replaces_the_model_and_frees_what_it_alone_used(store, folder_copy):
    first = import_folder(store, "z-image", inspect_folder(folder_copy))
    _change_scheduler(folder_copy)
    second = import_folder(store, "z-image", inspect_folder(folder_copy))
    assert second.new_blobs == 2  # the scheduler config and the model config
    assert store.manifest("z-image").digest == second.manifest.digest != first.manifest.digest
    gone = first.manifest.digests() - second.manifest.digests()
    assert len(gone) == 2 and not any(store.blob_path(d).exists() for d in gone)
    assert (
        second.bytes_freed
        == sum(layer.size for layer in first.manifest.layers if layer.digest in gone)
        + first.manifest.config_size
    )
    assert len(list(store.blobs_dir.iterdir())) == len(second.manifest.digests())
    assert_store_consistent(store)


def test_reimport_leaves_garbage_for_later_while_another_writer_is_busy(store, folder_copy):
    from ollama_img.store.locking import store_lock

    first = import_folder(store, "z-image", inspect_folder(folder_copy))
    _change_scheduler(folder_copy)
    with store_lock(store.root, exclusive=False):  # as if another `create` were running
        second = import_folder(store, "z-image", inspect_folder(folder_copy))
    assert second.bytes_freed == 0
    gone = first.manifest.digests() - second.manifest.digests()
    assert all(store.blob_path(d).exists() for d in gone)
    expected = (2, sum(store.blob_path(d).stat().st_size for d in gone))
    assert store.collect_garbage() == expected
    assert_store_consistent(store)


def test_progress_reports_every_byte_and_tensor(store, tiny_folder):
    plan = inspect_folder(tiny_folder)
    seen = {"bytes": 0, "tensors": 0}

    def progress(nbytes, ntensors):
        seen["bytes"] += nbytes
        seen["tensors"] += ntensors

    import_folder(store, "z-image", plan, progress=progress)
    assert seen == {"bytes": plan.tensor_bytes, "tensors": plan.tensor_count}


def test_threaded_and_inline_hashing_store_the_same_bytes(tmp_path, tiny_folder):
    stores = {}
    for hash_in_thread in (False, True):
        stores[hash_in_thread] = store = Store(tmp_path / f"s{hash_in_thread}")
        import_folder(store, "z", inspect_folder(tiny_folder), hash_in_thread=hash_in_thread)
        assert_store_consistent(store)
    assert stores[True].manifest("z").raw == stores[False].manifest("z").raw
    assert snapshot(stores[True].blobs_dir) == snapshot(stores[False].blobs_dir)
