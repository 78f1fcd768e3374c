"""`create --quantize` and `create --from`: which tensors are quantized, how their blobs look, what `show`
says, how big they are, and the errors a user can cause."""

import json
import re

import pytest

from ollama_img.errors import UserError
from ollama_img.models.zimage import QUANTIZATION
from ollama_img.quantization import TYPES, QuantParams, parse_quant_type, quantize_weight
from ollama_img.store import PLAIN_TENSOR_NAME, import_folder, inspect_folder
from ollama_img.store.safetensors_format import DTYPE_SIZES
from ollama_img.store.source import read_header
from tests.conftest import assert_store_consistent, snapshot

# Which tensors of the tiny model each type quantizes: the rule's families, wherever the input size is
# a multiple of the group size. TINY has dim 64, FFN hidden 170 (w2's input: divisible by nothing),
# text-encoder width 32 and MLP width 48, so groups of 64 (int8, int4) skip most of the text encoder.
QUANTIZED = "transformer/layers.0.attention.to_q.weight"
KEPT = (
    "transformer/layers.0.feed_forward.w2.weight",  # input 170
    "transformer/layers.0.adaLN_modulation.0.weight",  # adaLN: kept by the rule
    "transformer/all_x_embedder.2-1.weight",
    "transformer/all_final_layer.2-1.linear.weight",
    "transformer/cap_embedder.1.weight",
    "transformer/t_embedder.mlp.0.weight",
    "transformer/x_pad_token",
    "transformer/layers.0.attention_norm1.weight",
    "text_encoder/model.embed_tokens.weight",
    "vae/decoder.conv_in.weight",
)
EXPECTED_COUNTS = {
    "fp8": {"text_encoder": 18, "transformer": 36},
    "int8": {"text_encoder": 3, "transformer": 36},
    "int4": {"text_encoder": 3, "transformer": 36},
    "nvfp4": {"text_encoder": 21, "transformer": 36},
    "mxfp4": {"text_encoder": 18, "transformer": 36},
}


def _blob(store, layer):
    return read_header(store.blob_path(layer.digest))


def test_create_quantized_from_a_folder(store, cli, tiny_folder):
    result = cli("create", "z-fp8", "-f", str(tiny_folder), "--quantize", "fp8")
    assert result.code == 0, result.err
    assert re.fullmatch(
        r"created 'z-fp8:latest' in \d+\.\ds: 376 tensors, 2\.1 MB, \d+ new blobs, 0 reused blobs\n",
        result.out,
    )
    assert "quantizing to fp8" in result.err.splitlines()[0]
    plain = import_folder(store, "z-bf16", inspect_folder(tiny_folder)).manifest
    manifest = store.manifest("z-fp8")
    assert manifest.config.quantization.to_json() == {
        "type": "fp8",
        "mode": "mxfp8",
        "bits": 8,
        "group_size": 32,
        "rule": QUANTIZATION.text,
        "tensors": EXPECTED_COUNTS["fp8"],
    }
    layers = {layer.name: layer for layer in manifest.layers}
    plain_layers = {layer.name: layer for layer in plain.layers}
    assert list(layers) == list(plain_layers)  # same layers, same order, logical names
    quantized = set()
    for name, layer in layers.items():
        before = plain_layers[name]
        assert (layer.media_type, layer.dtype, layer.shape) == (before.media_type, before.dtype, before.shape)
        if not layer.is_tensor or layer.digest == before.digest:
            continue
        quantized.add(name)
        header = _blob(store, layer)
        out_dims, in_dims = layer.shape
        assert header.metadata == {"quantization": "fp8", "mode": "mxfp8", "bits": "8", "group_size": "32"}
        assert [(t.name, t.dtype, t.shape) for t in header.tensors] == [
            ("weight", "U32", (out_dims, in_dims // 4)),
            ("scales", "U8", (out_dims, in_dims // 32)),
        ]
    assert QUANTIZED in quantized and not quantized & set(KEPT)
    assert len(quantized) == sum(EXPECTED_COUNTS["fp8"].values())
    assert all(name.startswith(("transformer/", "text_encoder/")) for name in quantized)
    for name in KEPT:  # kept tensors are the very same blobs as in the bf16 model
        assert [t.name for t in _blob(store, layers[name]).tensors] == [PLAIN_TENSOR_NAME]
    assert_store_consistent(store)


@pytest.mark.parametrize("name", list(TYPES))
def test_each_type_quantizes_the_rule_and_shrinks_those_tensors(store, tiny_folder, name):
    """Quantized blobs are ~half (8-bit) or ~quarter (4-bit) of the bf16 blobs of the same tensors.

    Exactly: bits/16 of the bf16 bytes for the packed values, plus one scale (and for affine one bias,
    bf16) per group; the rest is each blob's JSON header (~150 bytes on tensors of 2 to 22 KB here),
    which the 0.03 allowance covers.
    """
    quant = TYPES[name]
    plain = {
        layer.name: layer
        for layer in import_folder(store, "plain", inspect_folder(tiny_folder)).manifest.layers
    }
    result = import_folder(store, name, inspect_folder(tiny_folder), quantize=quant)
    chosen = [
        layer
        for layer in result.manifest.layers
        if layer.is_tensor and QUANTIZATION.selects(layer.name, layer.dtype, layer.shape, quant)
    ]
    assert result.manifest.config.quantization.tensors == EXPECTED_COUNTS[name]
    assert len(chosen) == sum(EXPECTED_COUNTS[name].values())
    for layer in chosen:
        header = _blob(store, layer)
        assert header.metadata["quantization"] == name
        assert [t.name for t in header.tensors] == (
            ["weight", "scales", "biases"] if quant.mode == "affine" else ["weight", "scales"]
        )
        params = QuantParams.from_metadata(header.metadata, layer.dtype, layer.name)
        assert (params.mode, params.bits, params.group_size) == (quant.mode, quant.bits, quant.group_size)
    quantized_bytes = sum(layer.size for layer in chosen)
    bf16_bytes = sum(plain[layer.name].size for layer in chosen)
    per_group = (2 * DTYPE_SIZES["BF16"] if quant.mode == "affine" else 1) / quant.group_size
    exact = (quant.bits / 8 + per_group) / 2
    ratio = quantized_bytes / bf16_bytes
    assert exact <= ratio <= exact + 0.03, (ratio, exact)
    assert ratio < (0.56 if quant.bits == 8 else 0.31)
    assert result.manifest.total_size < store.manifest("plain").total_size


def test_create_from_a_stored_model_equals_create_from_the_folder(store, cli, tiny_folder):
    cli("create", "base", "-f", str(tiny_folder))
    blobs_before = {p.name for p in store.blobs_dir.iterdir()}
    result = cli("create", "base-fp8", "--from", "base", "--quantize", "mxfp8")
    assert result.code == 0, result.err
    assert "importing 'base-fp8:latest' from model 'base:latest'" in result.err
    new = {p.name for p in store.blobs_dir.iterdir()} - blobs_before
    manifest = store.manifest("base-fp8")
    assert len(new) == sum(EXPECTED_COUNTS["fp8"].values()) + 1  # the quantized weights and the config
    assert f"{len(new)} new blobs, {len(manifest.layers) - len(new) + 1} reused blobs" in result.out
    assert manifest.config.quantization.type == "fp8"  # the alias is stored by its name
    cli("create", "folder-fp8", "-f", str(tiny_folder), "--quantize", "fp8")
    assert store.manifest("folder-fp8").digest == manifest.digest  # the very same model
    assert cli("rm", "base").code == 0  # the quantized model does not need its source
    assert_store_consistent(store)
    assert store.manifest("base-fp8").digest == manifest.digest


def test_show_prints_the_quantization_and_the_rule(store, cli, tiny_folder):
    cli("create", "z", "-f", str(tiny_folder), "--quantize", "int4")
    text = cli("show", "z").out
    assert re.search(r"^    quantization\s+int4$", text, re.M)
    section = text.split("  Quantization\n")[1].split("\n\n")[0]
    assert re.search(r"type\s+int4: affine, 4 bits, groups of 64 \(4-bit integers", section)
    assert re.search(r"tensors\s+39 quantized \(text_encoder 3, transformer 36\)", section)
    rule = " ".join(line.strip() for line in section.split("rule", 1)[1].splitlines())
    assert rule == QUANTIZATION.text
    assert re.search(r"transformer\s+ZImageTransformer2DModel\s+706\.1K\s+1\.1 MB\s+BF16, int4", text)
    assert re.search(r"vae\s+AutoencoderKL\s+364\.7K\s+747 KB\s+BF16\n", text)
    doc = json.loads(cli("show", "z", "--json").out)
    assert doc["config"]["quantization"]["type"] == "int4"
    plain = cli("create", "p", "-f", str(tiny_folder))
    assert plain.code == 0 and "Quantization" not in cli("show", "p").out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["new", "-f", "{folder}", "--quantize", "fp7"],
            "unknown quantization type 'fp7'; choose one of fp8, int8, int4, nvfp4, mxfp4 (mxfp8 = fp8)",
        ),
        (["new", "--from", "missing", "--quantize", "fp8"], "model 'missing:latest' not found"),
        (
            ["new", "--from", "q", "--quantize", "int4"],
            "model 'q:latest' is already quantized (fp8); quantize the unquantized model or its folder instead",
        ),
        (
            ["new", "--from", "base"],
            "--from needs --quantize TYPE (to give a model a second name, use 'ollama-img cp')",
        ),
        (
            ["new", "--from", "base", "-f", "{folder}", "--quantize", "fp8"],
            "give either -f FOLDER or --from MODEL, not both",
        ),
        (
            ["q", "--from", "q", "--quantize", "fp8"],
            "model 'q:latest' is already quantized (fp8); quantize the unquantized model or its folder instead",
        ),
    ],
)
def test_bad_quantize_requests_are_one_line_and_change_nothing(store, cli, tiny_folder, args, message):
    cli("create", "base", "-f", str(tiny_folder))
    cli("create", "q", "-f", str(tiny_folder), "--quantize", "fp8")
    before = snapshot(store.root)
    result = cli("create", *[a.format(folder=tiny_folder) for a in args])
    assert result.code == 1
    assert result.err.startswith(f"Error: {message}") and result.err.count("\n") == 1, result.err
    assert snapshot(store.root) == before


def test_a_bad_type_fails_before_the_store_exists(store, cli, tiny_folder):
    result = cli("create", "new", "-f", str(tiny_folder), "-q", "Q4_K_M")
    assert result.code == 1 and result.err.startswith("Error: unknown quantization type 'Q4_K_M'")
    assert not store.root.exists()


def test_type_names_and_aliases():
    assert parse_quant_type("FP8") is parse_quant_type("mxfp8") is TYPES["fp8"]
    assert [(t.name, t.mode, t.bits, t.group_size) for t in TYPES.values()] == [
        ("fp8", "mxfp8", 8, 32),
        ("int8", "affine", 8, 64),
        ("int4", "affine", 4, 64),
        ("nvfp4", "nvfp4", 4, 16),
        ("mxfp4", "mxfp4", 4, 32),
    ]


def test_the_rule_needs_a_float_matrix_whose_input_size_fits_the_groups():
    fp8, int8 = TYPES["fp8"], TYPES["int8"]
    assert QUANTIZATION.selects("transformer/layers.3.feed_forward.w2.weight", "BF16", (3840, 10240), int8)
    assert QUANTIZATION.selects(
        "transformer/context_refiner.1.attention.to_out.0.weight", "F32", (64, 64), fp8
    )
    assert QUANTIZATION.selects("text_encoder/model.layers.35.mlp.down_proj.weight", "F16", (2560, 9728), fp8)
    assert not QUANTIZATION.selects("transformer/layers.3.feed_forward.w2.weight", "BF16", (64, 170), fp8)
    assert not QUANTIZATION.selects("text_encoder/model.layers.0.mlp.up_proj.weight", "BF16", (48, 32), int8)
    assert not QUANTIZATION.selects("transformer/layers.0.attention.to_q.weight", "F8_E4M3", (64, 64), fp8)
    assert not QUANTIZATION.selects("transformer/layers.0.attention.norm_q.weight", "BF16", (64,), fp8)
    assert not QUANTIZATION.selects("transformer/layers.0.adaLN_modulation.0.weight", "BF16", (256, 64), fp8)
    assert not QUANTIZATION.selects("vae/layers.0.attention.to_q.weight", "BF16", (64, 64), fp8)


def test_quantization_metadata_that_cannot_be_read_is_a_clear_error():
    with pytest.raises(UserError, match="without valid quantization metadata"):
        QuantParams.from_metadata({"mode": "mxfp8"}, "BF16", "z:transformer/x.weight")
    with pytest.raises(UserError, match="mode 'q3_k'"):
        QuantParams.from_metadata({"mode": "q3_k", "bits": "3", "group_size": "32"}, "BF16", "x")


@pytest.mark.parametrize("name", list(TYPES))
def test_quantizing_in_row_blocks_gives_the_bytes_of_the_whole_matrix(name):
    import mlx.core as mx
    import numpy as np

    quant = TYPES[name]
    weight = (mx.random.normal((96, 128), key=mx.random.key(3)) * 0.05).astype(mx.bfloat16)
    raw = np.array(weight.view(mx.uint16)).tobytes()
    chunks = [raw[i : i + 1000] for i in range(0, len(raw), 1000)]  # not row-aligned
    blocked = quantize_weight(iter(chunks), "BF16", (96, 128), quant, block_bytes=4096)
    assert len(blocked[0][2]) > 3  # really several blocks
    whole = mx.quantize(weight, group_size=quant.group_size, bits=quant.bits, mode=quant.mode)
    assert [n for n, _, _ in blocked] == ["weight", "scales", "biases"][: len(whole)]
    for (_, dtype, blocks), expected in zip(blocked, whole, strict=True):
        if expected.dtype == mx.bfloat16:
            expected = expected.view(mx.uint16)
        assert np.array_equal(np.concatenate(blocks), np.array(expected)), dtype


def test_a_model_can_be_quantized_in_place(store, cli, tiny_folder):
    """`create z --from z --quantize int8` replaces z by its quantized self; the bf16 blobs it no longer
    uses are freed, the others are kept."""
    cli("create", "z", "-f", str(tiny_folder))
    before = store.manifest("z")
    result = cli("create", "z", "--from", "z", "--quantize", "int8")
    assert result.code == 0, result.err
    after = store.manifest("z")
    assert after.config.quantization.type == "int8"
    assert "freed" in result.out
    gone = before.digests() - after.digests()
    assert (
        len(gone) == sum(EXPECTED_COUNTS["int8"].values()) + 1
    )  # the quantized weights' bf16 blobs, the config
    assert not any(store.blob_path(d).exists() for d in gone)
    assert_store_consistent(store)
