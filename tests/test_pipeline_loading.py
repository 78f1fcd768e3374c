"""Loading the MLX pipeline from model folders in the release layout, and what happens when they are wrong."""

import json
import shutil

import mlx.core as mx
import numpy as np
import pytest

from ollama_img import load_pipeline
from ollama_img.errors import UserError
from tests.fixtures.zimage_folder import TINY, build_zimage_folder


def test_release_layout_bf16_folder_generates_in_float32_on_cpu(tiny_folder):
    pipe = load_pipeline(tiny_folder)
    assert pipe.dtype == mx.float32  # CPU compute dtype
    # Linear weights stay in the checkpoint's bf16 (exactly representable in float32), the rest is float32
    assert pipe.transformer.layers[0].attention.to_qkv.weight.dtype == mx.bfloat16
    assert pipe.transformer.layers[0].attention_norm1.weight.dtype == mx.float32
    image = pipe.generate("a red horse", width=48, height=32, steps=2, seed=3)
    assert image.size == (48, 32)
    assert np.asarray(image).std() > 5
    assert pipe.resident_bytes > 0
    assert pipe.digest is None and pipe.name == str(tiny_folder.resolve())


def test_sharded_text_encoder_and_template_file_give_the_same_image(tmp_path, tiny_folder):
    other = build_zimage_folder(tmp_path / "m", TINY, text_encoder_shards=2, chat_template_file=True)
    a = load_pipeline(tiny_folder).generate("a red horse", width=32, height=32, steps=2, seed=9)
    b = load_pipeline(other).generate("a red horse", width=32, height=32, steps=2, seed=9)
    assert np.array_equal(np.asarray(a), np.asarray(b))


def test_weights_that_do_not_fit_the_config_are_a_clear_error(tmp_path, tiny_folder):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_folder, broken)
    cfg_path = broken / "transformer/config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["n_layers"] += 1
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(UserError, match="transformer: weights do not match the model's configuration"):
        load_pipeline(broken)


def test_a_folder_that_is_not_a_model_is_a_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="model_index.json is missing"):
        load_pipeline(tmp_path / "empty")


@pytest.mark.skipif(mx.default_device() == mx.gpu, reason="strips are the CPU path; GPUs convolve whole")
def test_large_convolutions_run_in_strips_with_the_same_result_and_less_scratch(monkeypatch):
    from ollama_img.models.autoencoder_kl import Conv2d

    conv = Conv2d(64, 32, 3, padding=1)
    x = mx.random.normal((1, 256, 96, 64), key=mx.random.key(0))
    mx.eval(x, conv.parameters())

    def peak_and_output():
        mx.reset_peak_memory()
        base = mx.get_active_memory()
        out = conv(x)
        mx.eval(out)
        return mx.get_peak_memory() - base, np.array(out)

    monkeypatch.setattr(Conv2d, "SCRATCH_BYTES", 1 << 40)  # one piece
    whole_peak, whole = peak_and_output()
    monkeypatch.setattr(Conv2d, "SCRATCH_BYTES", 4 << 20)  # strips of a few rows
    strips_peak, strips = peak_and_output()
    np.testing.assert_array_equal(strips, whole)
    assert strips_peak < whole_peak / 2


def test_a_folder_loads_the_files_the_importer_stores_not_every_safetensors(tmp_path, tiny_folder):
    """Variants beside a component's weights (`<stem>.<variant>.safetensors`) are neither imported nor
    loaded: diffusers reads `<stem>.safetensors` (or its index's shards) only."""
    from ollama_img.store import Store, import_folder, inspect_folder

    folder = tmp_path / "with-variant"
    shutil.copytree(tiny_folder, folder)
    weights = dict(mx.load(str(folder / "vae/diffusion_pytorch_model.safetensors")))
    mx.save_safetensors(
        str(folder / "vae/diffusion_pytorch_model.v2.safetensors"), {k: v * 0 for k, v in weights.items()}
    )
    kwargs = dict(width=32, height=32, steps=2, seed=9)
    want = np.asarray(load_pipeline(tiny_folder).generate("a red horse", **kwargs))
    assert np.array_equal(np.asarray(load_pipeline(folder).generate("a red horse", **kwargs)), want)
    store = Store(tmp_path / "store")
    manifest = import_folder(store, "v", inspect_folder(folder)).manifest
    assert {layer.name for layer in manifest.component_layers("vae") if layer.is_tensor} == {
        f"vae/{k}" for k in weights
    }
