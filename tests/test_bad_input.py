"""Every bad input: one clear line on stderr, a non-zero exit, and the store exactly as it was."""

import json
import os
import shutil
import struct

import pytest

from ollama_img.store import write_bytes_blob
from tests.conftest import snapshot


def _fails_cleanly(cli, store, args, *expected):
    """Run the command against a store holding one model; check the error and that nothing changed."""
    before = snapshot(store.root)
    result = cli(*args)
    assert result.code != 0
    assert result.out == ""
    lines = result.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.err
    for text in expected:
        assert text in lines[0], lines[0]
    assert snapshot(store.root) == before
    return lines[0]


@pytest.fixture
def populated(store, cli, tiny_folder):
    """The store holds z-image:latest, so 'unchanged' means more than 'still empty'."""
    assert cli("create", "z-image", "-f", str(tiny_folder)).code == 0
    return store


def _damage(folder, what):
    """Apply one kind of damage to a copy of the tiny folder; return the words the error must contain."""
    te = folder / "text_encoder/model.safetensors"
    shard = folder / "transformer/diffusion_pytorch_model-00002-of-00002.safetensors"
    if what == "no model_index.json":
        (folder / "model_index.json").unlink()
        return ["model_index.json"]
    if what == "model_index.json not JSON":
        (folder / "model_index.json").write_text("{ nope")
        return ["model_index.json", "not valid JSON"]
    if what == "unknown _class_name":
        index = json.loads((folder / "model_index.json").read_text())
        index["_class_name"] = "StableDiffusionXLPipeline"
        (folder / "model_index.json").write_text(json.dumps(index))
        return ["unsupported architecture", "StableDiffusionXLPipeline", "ZImagePipeline"]
    if what == "_class_name not a string":
        index = json.loads((folder / "model_index.json").read_text())
        index["_class_name"] = ["x"]
        (folder / "model_index.json").write_text(json.dumps(index))
        return ["unsupported architecture ['x']", "ZImagePipeline"]
    if what == "no _class_name":
        (folder / "model_index.json").write_text("{}")
        return ["_class_name"]
    if what == "missing component folder":
        shutil.rmtree(folder / "vae")
        return ["vae/"]
    if what == "missing config file":
        (folder / "tokenizer/tokenizer.json").unlink()
        return ["tokenizer/tokenizer.json"]
    if what == "corrupt config file":
        (folder / "transformer/config.json").write_text("")
        return ["transformer/config.json", "not valid JSON"]
    if what == "missing weight file":
        (folder / "vae/diffusion_pytorch_model.safetensors").unlink()
        return ["vae/", "diffusion_pytorch_model.safetensors"]
    if what == "pickle weights only":
        src = folder / "vae/diffusion_pytorch_model.safetensors"
        src.rename(src.with_suffix(".bin"))
        return ["only safetensors"]
    if what == "truncated safetensors":
        data = te.read_bytes()
        te.write_bytes(data[: len(data) // 2])
        return ["text_encoder/model.safetensors", "truncated"]
    if what == "truncated header":
        te.write_bytes(te.read_bytes()[:100])
        return ["text_encoder/model.safetensors", "truncated"]
    if what == "corrupt header":
        data = bytearray(shard.read_bytes())
        data[8:40] = b"\x00garbage, not json at all......."
        shard.write_bytes(bytes(data))
        return [shard.name, "not valid JSON"]
    if what == "bad offsets":
        data = shard.read_bytes()
        (n,) = struct.unpack("<Q", data[:8])
        header = json.loads(data[8 : 8 + n])
        first = next(k for k in header if k != "__metadata__")
        header[first]["data_offsets"][1] += 2
        raw = json.dumps(header).encode()
        raw += b" " * (-len(raw) % 8)
        shard.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + n :])
        return [shard.name, first]
    if what == "index names a missing shard":
        shard.unlink()
        return ["diffusion_pytorch_model.safetensors.index.json", shard.name, "missing"]
    if what == "index names a tensor its shard lacks":
        index_path = folder / "transformer/diffusion_pytorch_model.safetensors.index.json"
        index = json.loads(index_path.read_text())
        index["weight_map"]["ghost.weight"] = shard.name
        index_path.write_text(json.dumps(index))
        return ["ghost.weight", shard.name]
    raise AssertionError(what)


DAMAGE = [
    "no model_index.json",
    "model_index.json not JSON",
    "unknown _class_name",
    "_class_name not a string",
    "no _class_name",
    "missing component folder",
    "missing config file",
    "corrupt config file",
    "missing weight file",
    "pickle weights only",
    "truncated safetensors",
    "truncated header",
    "corrupt header",
    "bad offsets",
    "index names a missing shard",
    "index names a tensor its shard lacks",
]


@pytest.mark.parametrize("what", DAMAGE)
def test_damaged_folder(populated, cli, folder_copy, what):
    expected = _damage(folder_copy, what)
    _fails_cleanly(cli, populated, ["create", "new", "-f", str(folder_copy)], *expected)
    assert [str(n) for n in populated.names()] == ["z-image:latest"]


def test_damaged_folder_into_an_empty_store_creates_nothing(store, cli, folder_copy):
    _damage(folder_copy, "truncated safetensors")
    _fails_cleanly(cli, store, ["create", "new", "-f", str(folder_copy)], "truncated")
    assert not store.root.exists()


def test_missing_folder(populated, cli, tmp_path):
    _fails_cleanly(
        cli, populated, ["create", "x", "-f", str(tmp_path / "nowhere")], "nowhere", "does not exist"
    )


def test_a_file_is_read_as_a_modelfile(populated, cli, tmp_path):
    (tmp_path / "f").write_text("")  # -f FILE is a Modelfile (as in ollama); this one says nothing
    _fails_cleanly(cli, populated, ["create", "x", "-f", str(tmp_path / "f")], "has no FROM line")


@pytest.mark.parametrize("name", ["", "Bad Name", "a/b/c/d", "x:", ":tag", "a/../b", "z:$tag", "a//b"])
def test_invalid_model_names(populated, cli, tiny_folder, name):
    _fails_cleanly(cli, populated, ["create", name, "-f", str(tiny_folder)], "invalid model name")
    _fails_cleanly(cli, populated, ["cp", "z-image", name], "invalid model name")
    _fails_cleanly(cli, populated, ["show", name], "invalid model name")
    _fails_cleanly(cli, populated, ["rm", name], "invalid model name")


@pytest.mark.parametrize(
    "args", [["create", "-rf"], ["show", "-rf"], ["rm", "--all"], ["bogus"], ["cp", "a"]]
)
def test_usage_errors_end_in_a_usage_message_not_a_traceback(populated, cli, args):
    before = snapshot(populated.root)
    result = cli(*args)
    assert result.code == 2
    assert "Error:" in result.err and "Traceback" not in result.err
    assert snapshot(populated.root) == before


@pytest.mark.parametrize("command", [["show"], ["rm"], ["cp"], ["show", "--json"]])
def test_missing_model_with_a_hint(populated, cli, command):
    args = [*command, "z-imag"] + (["dst"] if command == ["cp"] else [])
    line = _fails_cleanly(cli, populated, args, "'z-imag:latest' not found", "did you mean 'z-image:latest'")
    assert line.endswith("?)")


def test_missing_model_hint_names_other_tags(populated, cli):
    _fails_cleanly(cli, populated, ["show", "z-image:turbo"], "did you mean 'z-image:latest'")


def test_missing_model_without_a_close_name(populated, cli):
    line = _fails_cleanly(cli, populated, ["rm", "flux"], "model 'flux:latest' not found")
    assert "did you mean" not in line


def test_rm_with_one_missing_name_removes_nothing(populated, cli):
    _fails_cleanly(cli, populated, ["rm", "z-image", "nope"], "'nope:latest' not found")


def test_missing_model_in_a_store_that_does_not_exist(store, cli):
    for args in (["show", "x"], ["rm", "x"], ["cp", "x", "y"]):
        _fails_cleanly(cli, store, args, "not found")
    assert not store.root.exists()


def test_show_of_a_model_whose_config_blob_is_gone(populated, cli):
    populated.blob_path(populated.manifest("z-image").config_digest).unlink()
    _fails_cleanly(cli, populated, ["show", "z-image"], "damaged", "config blob")


def test_cp_onto_itself_changes_nothing(populated, cli):
    path = populated.manifest_path("z-image")
    old = path.stat().st_mtime_ns - 10**9
    os.utime(path, ns=(old, old))
    for destination in ("z-image", "registry.ollama.ai/library/Z-Image:latest"):
        _fails_cleanly(
            cli, populated, ["cp", "z-image", destination], "cannot copy 'z-image:latest' onto itself"
        )
    assert path.stat().st_mtime_ns == old


def _edit_manifest(store, name, edit):
    path = store.manifest_path(name)
    doc = json.loads(path.read_bytes())
    edit(doc)
    path.write_text(json.dumps(doc))


def _edit_config(store, name, edit):
    """Point the model at a new config blob: its config, edited (`edit` returns the new document)."""
    config = edit(store.manifest(name).config.to_json())
    blob = write_bytes_blob(store.blobs_dir, json.dumps(config).encode())

    def point(doc):
        doc["config"].update(digest=blob.digest, size=blob.size)

    _edit_manifest(store, name, point)


def _set(key, value):
    def edit(config):
        config[key] = value
        return config

    return edit


def _set_in_vae(key, value):
    def edit(config):
        config["components"]["vae"][key] = value
        return config

    return edit


MANIFEST_DAMAGE = {
    "layer digest not sha256": (
        lambda doc: doc["layers"][3].update(digest="sha256:" + "z" * 64),
        ["invalid digest", "sha256:zzzz"],
    ),
    "layer digest a number": (lambda doc: doc["layers"][0].update(digest=7), ["invalid digest 7"]),
    "config digest uppercase": (
        lambda doc: doc["config"].update(digest=doc["config"]["digest"].upper()),
        ["config blob has the invalid digest"],
    ),
    "layer shape not a list": (lambda doc: doc["layers"][-1].update(shape="3x3"), ["shape '3x3'"]),
    "layer size a string": (lambda doc: doc["layers"][0].update(size="12"), ["size '12'"]),
}

CONFIG_DAMAGE = {
    "config a JSON list": (lambda config: [config], ["config blob holds a JSON list, not an object"]),
    "components a list": (_set("components", ["transformer"]), ["components ['transformer']"]),
    "parameter_count a string": (_set("parameter_count", "1.1M"), ["parameter_count '1.1M'"]),
    "architecture a list": (_set("architecture", ["ZImagePipeline"]), ["architecture ['ZImagePipeline']"]),
    "quantization a number": (_set("quantization", 8), ["quantization 8"]),
    "component not an object": (_set("components", {"vae": 3}), ["'vae' as 3"]),
    "component parameters a string": (_set_in_vae("parameters", "many"), ["parameters 'many'", "'vae'"]),
    "component dtypes a string": (_set_in_vae("dtypes", "F32"), ["dtypes 'F32'", "'vae'"]),
    "component class a dict": (_set_in_vae("class", {}), ["class {}", "'vae'"]),
}


@pytest.mark.parametrize("what", [*MANIFEST_DAMAGE, *CONFIG_DAMAGE])
def test_a_hand_damaged_model_is_an_error_everywhere_and_removable(populated, cli, what):
    if what in MANIFEST_DAMAGE:
        edit, expected = MANIFEST_DAMAGE[what]
        _edit_manifest(populated, "z-image", edit)
    else:
        edit, expected = CONFIG_DAMAGE[what]
        _edit_config(populated, "z-image", edit)
    prefix = (
        "corrupt manifest z-image:latest" if what.startswith("layer s") else "model z-image:latest is damaged"
    )
    for args in (
        ["show", "z-image"],
        ["show", "z-image", "--json"],
        ["create", "q", "--from", "z-image", "-q", "int8"],
    ):
        _fails_cleanly(cli, populated, args, prefix, *expected)
    listing = cli("list")
    assert listing.code == 0 and "damaged" in listing.out.splitlines()[1]
    result = cli("rm", "z-image")
    assert (result.code, result.out.splitlines()[0]) == (0, "deleted 'z-image:latest'")
    assert populated.names() == []


@pytest.mark.parametrize(
    "variable, command",
    [
        ("OLLAMA_IMG_RUNTIME_DIR", ("ps",)),
        ("OLLAMA_IMG_RUNTIME_DIR", ("run", "z-image", "a cat")),
        ("OLLAMA_IMG_MODELS", ("list",)),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, tuple) else v,
)
def test_a_folder_variable_naming_no_user_is_one_line(populated, cli, monkeypatch, variable, command):
    monkeypatch.setenv(variable, "~no-such-user-here/folder")
    _fails_cleanly(cli, populated, command, variable, "no such user")
