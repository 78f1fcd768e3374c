"""LoRA adapters: the file formats and what they change, the fit check with its errors, the two ways of
computing (side path, merged) on plain and quantized layers, fused layers, adapter blobs in the store.

Adapters here are written with numpy in each format's own spelling; tests/test_lora_parity.py holds the
result to diffusers' on files made by peft."""

import dataclasses
import json
import math
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from safetensors.numpy import save_file

from ollama_img.adapters import component_shapes, parse_spec, resolve
from ollama_img.errors import UserError
from ollama_img.models import ARCHITECTURES
from ollama_img.models.loading import DequantizingLinear
from ollama_img.models.lora import PEFT_METADATA_KEY, check_adapter
from ollama_img.models.lora_layers import MERGED, SIDE_PATH, LoraLinear, apply, factors, remove_side_paths
from ollama_img.models.zimage import ARCHITECTURE as ZIMAGE
from ollama_img.models.zimage import LORA
from ollama_img.weights import FolderSource

DIM, HIDDEN = 64, 170  # TINY's transformer
MODULES = ("layers.0.attention.to_q", "layers.1.feed_forward.w2", "noise_refiner.0.adaLN_modulation.0")


@pytest.fixture(scope="module")
def shapes(tiny_folder_f32):
    return component_shapes(FolderSource(tiny_folder_f32), "transformer")


def pairs(shapes, modules=MODULES, rank=4, seed=0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Random (A, B) for each module, A (rank, in), B (out, rank), at the base's shapes."""
    rng = np.random.default_rng(seed)
    out = {}
    for module in modules:
        rows, cols = shapes[f"{module}.weight"]
        out[module] = (
            rng.standard_normal((rank, cols)).astype(np.float32),
            rng.standard_normal((rows, rank)).astype(np.float32),
        )
    return out


def write(path: Path, tensors: dict, metadata: dict | None = None) -> Path:
    save_file(tensors, str(path), metadata=metadata)
    return path


def peft_file(path, pairs_, prefix="transformer.", metadata=None):
    tensors = {}
    for module, (a, b) in pairs_.items():
        tensors[f"{prefix}{module}.lora_A.weight"] = a
        tensors[f"{prefix}{module}.lora_B.weight"] = b
    return write(path, tensors, metadata)


def kohya_file(path, pairs_, alpha: float):
    tensors = {}
    for module, (a, b) in pairs_.items():
        flat = "lora_unet_" + module.replace(".", "_")
        tensors[f"{flat}.lora_down.weight"] = a
        tensors[f"{flat}.lora_up.weight"] = b
        tensors[f"{flat}.alpha"] = np.array(alpha, dtype=np.float32)
    return write(path, tensors)


def layout(path, shapes):
    return check_adapter(ZIMAGE, path, shapes)


def scales(lay) -> dict[tuple[str, ...], float]:
    return {m.targets: m.scale for m in lay.modules}


# -- formats ----------------------------------------------------------------------------------------


def test_every_spelling_of_the_same_adapter_reads_the_same(tmp_path, shapes):
    p = pairs(shapes)
    rank, alpha = 4, 2.0  # kohya: scale alpha / rank
    peft_meta = {PEFT_METADATA_KEY: json.dumps({"transformer.r": rank, "transformer.lora_alpha": alpha})}
    files = {
        "peft": peft_file(tmp_path / "peft.safetensors", p, metadata=peft_meta),
        "peft-unprefixed": peft_file(
            tmp_path / "bare.safetensors",
            p,
            "",
            {PEFT_METADATA_KEY: json.dumps({"r": rank, "lora_alpha": alpha})},
        ),
        "kohya": kohya_file(tmp_path / "kohya.safetensors", p, alpha),
    }
    diffusion = {}
    dots = {}
    for module, (a, b) in p.items():
        diffusion[f"diffusion_model.{module}.lora_A.weight"] = a
        diffusion[f"diffusion_model.{module}.lora_B.weight"] = b
        diffusion[f"diffusion_model.{module}.alpha"] = np.array(alpha, dtype=np.float16)
        dotted = module.replace("to_q", "to.q")
        dots[f"{dotted}.lora.down.weight"] = a
        dots[f"{dotted}.lora.up.weight"] = b
        dots[f"{dotted}.alpha"] = np.array(alpha, dtype=np.float32)
    files["diffusion_model"] = write(tmp_path / "dm.safetensors", diffusion)
    files["dots"] = write(tmp_path / "dots.safetensors", dots)
    expected = {(m,): alpha / rank for m in MODULES}
    for name, path in files.items():
        assert scales(layout(path, shapes)) == expected, name
    reference = None
    for name, path in files.items():
        got = _factors(path, shapes)
        if reference is None:
            reference = got
        assert got.keys() == reference.keys()
        for key in got:
            for ours, theirs in zip(got[key], reference[key], strict=True):
                np.testing.assert_allclose(np.array(ours), np.array(theirs), rtol=1e-6, err_msg=name)


def test_peft_metadata_scales_each_module_as_peft_does(tmp_path, shapes):
    p = pairs(shapes)
    config = {
        "r": 4,
        "lora_alpha": 8,
        "alpha_pattern": {"w2": 2.0},
        "rank_pattern": {"^noise_refiner.0.adaLN_modulation.0": 16},
    }
    path = peft_file(tmp_path / "a.safetensors", p, metadata={PEFT_METADATA_KEY: json.dumps(config)})
    assert scales(layout(path, shapes)) == {
        ("layers.0.attention.to_q",): 2.0,
        ("layers.1.feed_forward.w2",): 0.5,
        ("noise_refiner.0.adaLN_modulation.0",): 0.5,
    }
    rs = peft_file(
        tmp_path / "rs.safetensors",
        p,
        metadata={PEFT_METADATA_KEY: json.dumps({"r": 4, "lora_alpha": 8, "use_rslora": True})},
    )
    assert set(scales(layout(rs, shapes)).values()) == {8 / math.sqrt(4)}
    plain = peft_file(tmp_path / "plain.safetensors", p)
    assert set(scales(layout(plain, shapes)).values()) == {1.0}  # no config: alpha = rank


def test_the_original_fused_qkv_and_out_names_stand_for_the_split_layers(tmp_path, shapes):
    rng = np.random.default_rng(3)
    down = rng.standard_normal((2, DIM)).astype(np.float32)
    up = rng.standard_normal((3 * DIM, 2)).astype(np.float32)
    out_down = rng.standard_normal((2, DIM)).astype(np.float32)
    out_up = rng.standard_normal((DIM, 2)).astype(np.float32)
    fused = write(
        tmp_path / "qkv.safetensors",
        {
            "lora_unet_layers_0_attention_qkv.lora_down.weight": down,
            "lora_unet_layers_0_attention_qkv.lora_up.weight": up,
            "lora_unet_layers_0_attention_out.lora_down.weight": out_down,
            "lora_unet_layers_0_attention_out.lora_up.weight": out_up,
        },
    )
    split = {
        **{
            f"layers.0.attention.to_{p}": (down, part) for p, part in zip("qkv", np.split(up, 3), strict=True)
        },
        "layers.0.attention.to_out.0": (out_down, out_up),
    }
    split_file = peft_file(tmp_path / "split.safetensors", split)
    assert {m.targets for m in layout(fused, shapes).modules} == {
        ("layers.0.attention.to_q", "layers.0.attention.to_k", "layers.0.attention.to_v"),
        ("layers.0.attention.to_out.0",),
    }
    x = mx.array(np.random.default_rng(4).standard_normal((5, DIM)).astype(np.float32))
    outputs = []
    for path in (fused, split_file):
        model = _tiny_transformer(fused=True)
        apply(model, LORA, resolve([(str(path), 0.7)], FolderSource(_TINY[0]), ZIMAGE), SIDE_PATH)
        block = model.layers[0].attention
        outputs.append(np.array(mx.concatenate([block.to_qkv(x), block.to_out[0](x)], axis=-1)))
    np.testing.assert_allclose(outputs[0], outputs[1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "tensors, message",
    [
        (
            {
                "lora_unet_layers_0_attention_to_x.lora_down.weight": (4, DIM),
                "lora_unet_layers_0_attention_to_x.lora_up.weight": (DIM, 4),
            },
            "key 'lora_unet_layers_0_attention_to_x.lora_down.weight' names no Linear layer of the model's transformer",
        ),
        (
            {
                "transformer.layers.0.attention.to_q.lora_A.weight": (4, DIM + 1),
                "transformer.layers.0.attention.to_q.lora_B.weight": (DIM, 4),
            },
            r"key 'transformer.layers.0.attention.to_q.lora_A.weight' has shape \[4, 65\], the layer takes 64 inputs",
        ),
        (
            {
                "transformer.layers.0.feed_forward.w1.lora_A.weight": (4, DIM),
                "transformer.layers.0.feed_forward.w1.lora_B.weight": (DIM, 4),
            },
            r"key 'transformer.layers.0.feed_forward.w1.lora_B.weight' has shape \[64, 4\], expected \[170, 4\]",
        ),
        (
            {"transformer.layers.0.attention.to_q.lora_A.weight": (4, DIM)},
            "key 'transformer.layers.0.attention.to_q.lora_A.weight' has no lora_B.weight beside it",
        ),
        (
            {
                "layers.0.attention.to_q.lora_A.weight": (4, DIM),
                "layers.0.attention.to_q.lora_B.weight": (DIM, 4),
                "layers.0.attention.to_q.lora_magnitude_vector": (DIM,),
            },
            "is a DoRA adapter's, which ollama-img cannot apply",
        ),
        (
            {
                "text_encoder.layers.0.self_attn.q_proj.lora_A.weight": (4, 32),
                "text_encoder.layers.0.self_attn.q_proj.lora_B.weight": (32, 4),
            },
            "changes the text encoder; adapters change the transformer only",
        ),
        (
            {"layers.0.attention.to_q.weight": (DIM, DIM)},
            "key 'layers.0.attention.to_q.weight' is not a LoRA weight",
        ),
        (
            {
                "lora_unet_layers_0_attention_to_k.lora_down.weight": (4, DIM),
                "lora_unet_layers_0_attention_to_k.lora_up.weight": (DIM, 4),
                "lora_unet_layers_0_attention_to_q.alpha": (),
            },
            "key 'lora_unet_layers_0_attention_to_q.alpha' has no LoRA pair beside it",
        ),
    ],
)
def test_an_adapter_that_does_not_fit_names_its_first_offending_key(tmp_path, shapes, tensors, message):
    path = write(tmp_path / "bad.safetensors", {k: np.ones(s, np.float32) for k, s in tensors.items()})
    with pytest.raises(UserError, match=message) as caught:
        layout(path, shapes)
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)


def test_files_that_are_not_adapters_are_refused_in_one_line(tmp_path, shapes):
    with pytest.raises(UserError, match="no such file"):
        layout(tmp_path / "missing.safetensors", shapes)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a safetensors file at all")
    with pytest.raises(UserError, match="corrupt safetensors file"):
        layout(garbage, shapes)
    with pytest.raises(UserError, match="do not take LoRA adapters"):
        check_adapter(ARCHITECTURES["Flux2KleinPipeline"], garbage, shapes)


def test_lora_spec_takes_a_scale_after_the_last_colon():
    assert parse_spec("style.safetensors:0.8") == ("style.safetensors", 0.8)
    assert parse_spec("style.safetensors") == ("style.safetensors", 1.0)
    assert parse_spec("dir:with:colons/style.safetensors") == ("dir:with:colons/style.safetensors", 1.0)
    assert parse_spec("a.safetensors:-0.5") == ("a.safetensors", -0.5)
    with pytest.raises(UserError, match="finite"):
        parse_spec("a.safetensors:inf")


# -- computing --------------------------------------------------------------------------------------

_TINY: list = []  # the tiny float32 folder (exact arithmetic), for helpers outside fixtures


@pytest.fixture(autouse=True, scope="module")
def _remember_tiny(tiny_folder_f32):
    _TINY[:] = [tiny_folder_f32]


def _tiny_transformer(fused: bool):
    from ollama_img.models.loading import ComponentLoader
    from ollama_img.models.zimage.config import ZImageConfig
    from ollama_img.models.zimage.transformer import ZImageTransformer

    loader = ComponentLoader(FolderSource(_TINY[0]), dtype=mx.float32)
    config = loader.config(ZImageConfig.from_dict, "transformer/config.json")
    fuse = ZImageTransformer.fuse_units if fused else None
    return loader.load("transformer", ZImageTransformer(config), fuse=fuse)


def _factors(path, shapes):
    model = _tiny_transformer(fused=False)
    (adapter,) = resolve([(str(path), 1.0)], FolderSource(_TINY[0]), ZIMAGE)
    return factors(model, LORA, [adapter], mx.float32)


def test_a_side_path_adds_scale_b_a_x_to_plain_quantized_and_dequantizing_layers():
    rng = np.random.default_rng(5)
    weight = mx.array(rng.standard_normal((96, 128)).astype(np.float32) / 10)
    down = mx.array(rng.standard_normal((128, 6)).astype(np.float32))
    up = mx.array(rng.standard_normal((6, 96)).astype(np.float32))
    x = mx.array(rng.standard_normal((3, 128)).astype(np.float32))
    plain = nn.Linear(128, 96, bias=False)
    plain.weight = weight
    quantized = nn.QuantizedLinear.from_linear(plain, group_size=64, bits=8)
    dequantizing = DequantizingLinear.from_quantized(quantized, mx.float32)
    for base in (plain, quantized, dequantizing):
        expected = base(x) + (x @ down) @ up
        np.testing.assert_allclose(
            np.array(LoraLinear(base, down, up)(x)), np.array(expected), rtol=1e-5, atol=1e-5
        )


def test_merged_equals_the_side_path_on_plain_weights_and_stays_within_the_type_on_quantized(
    tmp_path, shapes
):
    path = peft_file(tmp_path / "a.safetensors", pairs(shapes, rank=2))
    (adapter,) = resolve([(str(path), 0.5)], FolderSource(_TINY[0]), ZIMAGE)
    x = mx.array(np.random.default_rng(6).standard_normal((4, DIM)).astype(np.float32))
    results = {}
    for strategy in (SIDE_PATH, MERGED):
        model = _tiny_transformer(fused=True)
        assert apply(model, LORA, [adapter], strategy) == 3
        results[strategy] = np.array(model.layers[0].attention.to_qkv(x))
    np.testing.assert_allclose(results[MERGED], results[SIDE_PATH], rtol=1e-5, atol=1e-5)
    base = np.array(_tiny_transformer(fused=True).layers[0].attention.to_qkv(x))
    assert np.abs(results[SIDE_PATH] - base)[:, :DIM].max() > 0.1  # to_q changed
    np.testing.assert_array_equal(results[SIDE_PATH][:, DIM:], base[:, DIM:])  # to_k, to_v did not

    # quantized: the side path is exact with respect to the quantized base; merging re-quantizes
    rng = np.random.default_rng(7)
    plain = nn.Linear(128, 96, bias=False)
    plain.weight = mx.array(rng.standard_normal((96, 128)).astype(np.float32) / math.sqrt(128))
    down = mx.array(rng.standard_normal((128, 4)).astype(np.float32) / math.sqrt(128))
    up = mx.array(rng.standard_normal((4, 96)).astype(np.float32) * 0.1)
    xq = mx.array(rng.standard_normal((8, 128)).astype(np.float32))
    exact = np.array(plain(xq) + (xq @ down) @ up)
    from ollama_img.models.lora_layers import merge

    for bits in (8, 4):
        layer = nn.QuantizedLinear.from_linear(plain, group_size=64, bits=bits)
        side = np.array(LoraLinear(layer, down, up)(xq))
        merge(layer, down, up)
        merged = np.array(layer(xq))
        step = np.abs(exact).max() * 2.0 ** (1 - bits) * 4  # a few quantization steps
        assert np.abs(merged - exact).max() < step and np.abs(side - exact).max() < step
        assert np.abs(merged - side).max() > 0  # merging re-rounds: not the same numbers


def test_applying_again_replaces_the_side_paths_and_removing_restores_the_layers(tmp_path, shapes):
    path = peft_file(tmp_path / "a.safetensors", pairs(shapes))
    (one,) = resolve([(str(path), 1.0)], FolderSource(_TINY[0]), ZIMAGE)
    (half,) = resolve([(str(path), 0.5)], FolderSource(_TINY[0]), ZIMAGE)
    model = _tiny_transformer(fused=True)
    x = mx.array(np.random.default_rng(8).standard_normal((2, DIM)).astype(np.float32))
    base = np.array(model.layers[0].attention.to_qkv(x))
    apply(model, LORA, [one], SIDE_PATH)
    full = np.array(model.layers[0].attention.to_qkv(x))
    apply(model, LORA, [half], SIDE_PATH)
    halfway = np.array(model.layers[0].attention.to_qkv(x))
    np.testing.assert_allclose(halfway - base, (full - base) / 2, rtol=1e-4, atol=1e-5)
    apply(model, LORA, [one, half], SIDE_PATH)  # two adapters add up
    np.testing.assert_allclose(
        np.array(model.layers[0].attention.to_qkv(x)) - base, 1.5 * (full - base), rtol=1e-4, atol=1e-5
    )
    assert remove_side_paths(model) == 3
    assert not any(isinstance(m, LoraLinear) for _, m in model.named_modules())
    np.testing.assert_array_equal(np.array(model.layers[0].attention.to_qkv(x)), base)


# -- the store --------------------------------------------------------------------------------------


def test_adapter_blobs_are_the_file_deduplicated_checked_and_collected(store, tmp_path, shapes):
    from ollama_img.store.adapters import adapter_blob, put_adapter
    from tests.conftest import file_sha256

    path = peft_file(tmp_path / "a.safetensors", pairs(shapes))
    first = put_adapter(store, path)
    again = put_adapter(store, path)
    assert first.digest == again.digest == "sha256:" + file_sha256(path)
    assert first.new and not again.new
    blob = adapter_blob(store, first.digest)
    assert blob.read_bytes() == path.read_bytes()
    with pytest.raises(UserError, match="is not in the store"):
        adapter_blob(store, "sha256:" + "0" * 64)
    with pytest.raises(UserError, match="is not a digest"):
        adapter_blob(store, str(path))
    blob.write_bytes(blob.read_bytes()[:-1] + b"X")
    with pytest.raises(UserError, match="is damaged"):
        adapter_blob(store, first.digest)
    assert store.collect_garbage() == (1, path.stat().st_size)  # no model names it: unused


def test_create_from_a_modelfile_refuses_an_adapter_that_does_not_fit_naming_its_line(
    store, cli, tmp_path, tiny_folder, shapes
):
    from ollama_img.store import import_folder, inspect_folder

    import_folder(store, "z-image", inspect_folder(tiny_folder))
    peft_file(tmp_path / "good.safetensors", pairs(shapes))
    wide = {"layers.0.attention.to_q": (np.ones((2, DIM + 1), np.float32), np.ones((DIM, 2), np.float32))}
    bad = peft_file(tmp_path / "wide.safetensors", wide)
    for base in ("z-image", str(tiny_folder)):  # a stored base, a folder
        modelfile = tmp_path / "Modelfile"
        modelfile.write_text(f"FROM {base}\nADAPTER good.safetensors 0.5\n\nADAPTER wide.safetensors\n")
        before = sorted(p.name for p in store.blobs_dir.iterdir())
        result = cli("create", "styled", "-f", str(modelfile))
        assert result.code == 1
        assert result.err.strip() == (
            f"Error: Modelfile line 4: adapter {bad}: key 'transformer.layers.0.attention.to_q.lora_A.weight' "
            "has shape [2, 65], the layer takes 64 inputs"
        )
        assert sorted(p.name for p in store.blobs_dir.iterdir()) == before  # nothing written
    modelfile.write_text("FROM z-image\nADAPTER good.safetensors 0.5\n")
    assert cli("create", "styled", "-f", str(modelfile)).code == 0
    assert [(a.name, a.scale) for a in store.manifest("styled").config.adapters] == [
        ("good.safetensors", 0.5)
    ]
    from ollama_img.engine.memory import planner_for  # the engine plans with the model's own adapters
    from ollama_img.memory.plan import DEVICES

    own = layout(tmp_path / "good.safetensors", shapes).side_path_elements
    styled = planner_for("styled", DEVICES["cuda"])
    assert {c.name: c.adapter_elements for c in styled.profile.components}["transformer"] == own > 0
    # a request's own adapters (checked before queueing) count in its plan, beside the model's
    from ollama_img.engine.catalog import check_adapters
    from ollama_img.engine.memory import Ask
    from ollama_img.memory.budget import Budget

    (record,) = store.manifest("styled").config.adapters
    held = check_adapters("z-image", [(record.digest, 1.0)])
    assert held == ("transformer", own)
    ask = Ask(width=64, height=64, count=1, batch=1, prompts=("a cat",))
    budget = Budget(1 << 40, "test")

    def transformer_bytes(plan) -> int:
        return next(c.weights for c in plan.components if c.name == "transformer")

    plain, asked = ask.plan(styled, budget), dataclasses.replace(ask, adapters=held).plan(styled, budget)
    assert transformer_bytes(asked) - transformer_bytes(plain) == 2 * own  # bf16 on CUDA


def test_a_pipeline_swaps_adapters_in_and_out_between_generations(tiny_folder_f32, tmp_path, shapes):
    """Side paths follow each generation's adapters, back to none, whatever the transformer held."""
    from ollama_img import load_pipeline

    path = peft_file(tmp_path / "a.safetensors", pairs(shapes))
    pipe = load_pipeline(tiny_folder_f32)
    kwargs = dict(width=32, height=32, steps=2, seed=1)
    base = np.array(pipe.denoise("a fox", **kwargs))
    with_adapter = np.array(pipe.denoise("a fox", loras=[(path, 1.0)], **kwargs))
    assert any(isinstance(m, LoraLinear) for _, m in pipe.transformer.named_modules())
    again = np.array(pipe.denoise("a fox", **kwargs))
    assert not any(isinstance(m, LoraLinear) for _, m in pipe.transformer.named_modules())
    assert np.abs(with_adapter - base).max() > 1e-3
    np.testing.assert_array_equal(again, base)


# -- memory ------------------------------------------------------------------------------------------


def test_the_plan_counts_the_side_paths_the_adapters_make(tmp_path, shapes):
    """The layout's side-path elements are those of the factors built, fused layers' zero blocks
    included: on the fused q|k|v, a q-only pair holds an up as wide as all three."""
    qkv = {"lora_unet_layers_0_attention_qkv.lora_down.weight": np.ones((2, DIM), np.float32)}
    qkv["lora_unet_layers_0_attention_qkv.lora_up.weight"] = np.ones((3 * DIM, 2), np.float32)
    files = [
        peft_file(tmp_path / "a.safetensors", pairs(shapes, (*MODULES, "layers.1.feed_forward.w1"), rank=3)),
        write(tmp_path / "qkv.safetensors", qkv),
    ]
    adapters = resolve([(str(f), 1.0) for f in files], FolderSource(_TINY[0]), ZIMAGE)
    built = factors(_tiny_transformer(fused=True), LORA, adapters, mx.float32)
    assert sum(a.layout.side_path_elements for a in adapters) == sum(
        d.size + u.size for d, u in built.values()
    )


def test_a_pipeline_plans_with_the_side_paths_it_holds(tiny_folder_f32, tmp_path, shapes):
    """Loaded with an adapter, the transformer's planned bytes are its weights plus the side paths it
    holds (float32 on the CPU); a generation's own adapters count for that generation only; merged
    adapters hold nothing beside the weights."""
    from ollama_img import load_pipeline
    from ollama_img.adapters import held_elements

    path = peft_file(tmp_path / "a.safetensors", pairs(shapes, rank=8))
    (adapter,) = resolve([(str(path), 1.0)], FolderSource(tiny_folder_f32), ZIMAGE)

    def planned(pipe) -> int:
        (transformer,) = [c for c in pipe.memory_plan.components if c.name == "transformer"]
        return transformer.weights

    def side_paths(pipe) -> int:
        held = [m for _, m in pipe.transformer.named_modules() if isinstance(m, LoraLinear)]
        return sum(m.lora_down.nbytes + m.lora_up.nbytes for m in held)

    kwargs = dict(width=32, height=32, steps=1, seed=1)
    plain = load_pipeline(tiny_folder_f32)
    plain.denoise("a fox", **kwargs)
    base = planned(plain)
    plain.denoise("a fox", loras=[(path, 1.0)], **kwargs)
    assert planned(plain) - base == side_paths(plain) == 4 * held_elements([adapter]) > 0
    plain.denoise("a fox", **kwargs)
    assert planned(plain) == base

    # a budget the model fits only without them: refused in one error, and the adapters go again
    from ollama_img.memory.budget import Budget
    from ollama_img.memory.plan import MemoryPlanError, Request, needs

    planner = plain.planner
    request = Request(32, 32, prompt_bytes=len("a fox"))
    least = min(needs(planner.profile, planner.device, request).values())
    plain.planner = planner.within(Budget(least, "test"))
    with pytest.raises(MemoryPlanError):
        plain.denoise("a fox", loras=[(path, 1.0)], **kwargs)
    assert side_paths(plain) == 0
    plain.denoise("a fox", **kwargs)  # the next request, within the budget

    loaded = load_pipeline(tiny_folder_f32, loras=[(path, 1.0)])
    (transformer,) = [c for c in loaded.planner.for_load().components if c.name == "transformer"]
    assert transformer.weights - base == 4 * held_elements([adapter])
    merged = load_pipeline(tiny_folder_f32, loras=[(path, 1.0)], lora_strategy=MERGED)
    (transformer,) = [c for c in merged.planner.for_load().components if c.name == "transformer"]
    assert transformer.weights == base
