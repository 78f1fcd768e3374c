"""`create -f Modelfile` and the store: adapter, params and license layers, `show` and its round trip,
parameters as defaults through the engine and `load_pipeline`, garbage collection, crashes, push and pull.

The adapters here are tiny safetensors files that fit the tiny transformer (create checks that: see
tests/test_lora.py); what is in them does not matter to the store.
"""

import base64
import hashlib
import io
import json
import re
import signal

import numpy as np
import pytest
from PIL import Image
from safetensors.numpy import save_file

from ollama_img.engine.params import generate_params, with_model_params
from ollama_img.errors import UserError
from ollama_img.png_meta import read_png_text
from ollama_img.store import Store, import_folder, inspect_folder
from ollama_img.store.config import AdapterRecord
from ollama_img.store.manifest import ADAPTER_MEDIA_TYPE, LICENSE_MEDIA_TYPE, PARAMS_MEDIA_TYPE
from tests.conftest import assert_store_consistent, snapshot
from tests.fixtures.engine_env import EngineEnv
from tests.fixtures.images import picture
from tests.test_crash_safety import _spawn

LICENSE = 'MIT License\n\nCopyright "someone"\n'


def write_adapter(path, seed: int = 0):
    """A rank-2 adapter of the tiny transformer's first to_q (dim 64): it fits the base, as create checks."""
    rng = np.random.default_rng(seed)
    save_file(
        {
            "transformer.layers.0.attention.to_q.lora_A.weight": rng.standard_normal(
                (2, 64), dtype=np.float32
            ),
            "transformer.layers.0.attention.to_q.lora_B.weight": rng.standard_normal(
                (64, 2), dtype=np.float32
            ),
        },
        str(path),
    )
    return path


def write_modelfile(path, text: str):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def sha256_of(path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def ok(result):
    assert result.code == 0, result.err
    return result


@pytest.fixture
def base(store, tiny_folder):
    import_folder(store, "z-image", inspect_folder(tiny_folder))
    return store.manifest("z-image")


@pytest.fixture
def styled(store, base, cli, tmp_path):
    """z-image with one adapter, two parameters and a license."""
    write_adapter(tmp_path / "style.safetensors")
    path = write_modelfile(
        tmp_path / "Modelfile",
        "FROM z-image\nADAPTER ./style.safetensors 0.8\nPARAMETER steps 4\n"
        f'PARAMETER negative_prompt "blurry"\nLICENSE """{LICENSE}"""\n',
    )
    ok(cli("create", "styled", "-f", str(path)))
    return store.manifest("styled")


# -- create ----------------------------------------------------------------------------------------


def test_create_from_a_stored_model_shares_its_blobs_and_adds_a_layer_for_each_addition(
    store, base, cli, tmp_path
):
    adapter = write_adapter(tmp_path / "style.safetensors")
    path = write_modelfile(
        tmp_path / "Modelfile",
        "FROM z-image\nADAPTER ./style.safetensors 0.8\nPARAMETER steps 4\n"
        f'PARAMETER negative_prompt "blurry"\nLICENSE """{LICENSE}"""\n',
    )
    created = ok(cli("create", "styled", "-f", str(path)))
    # the adapter, the params, the license and the config are new; every blob of the base is reused
    assert re.search(rf"4 new blobs, {len(base.digests()) - 1} reused blobs", created.out), created.out
    assert "1 adapter(s), 2 parameter(s)" in created.out

    styled = store.manifest("styled")
    assert styled.weight_layers() == base.layers  # the same layers, the same blobs
    added = styled.layers[len(base.layers) :]
    assert [layer.media_type for layer in added] == [
        ADAPTER_MEDIA_TYPE,
        PARAMS_MEDIA_TYPE,
        LICENSE_MEDIA_TYPE,
    ]
    adapter_layer, params_layer, license_layer = added
    assert adapter_layer.name == "adapters/style.safetensors"
    assert adapter_layer.digest == sha256_of(adapter) and adapter_layer.size == adapter.stat().st_size
    assert store.blob_path(adapter_layer.digest).read_bytes() == adapter.read_bytes()  # the file as it is
    assert json.loads(store.blob_path(params_layer.digest).read_bytes()) == {
        "steps": 4,
        "negative_prompt": "blurry",
    }
    assert store.blob_path(license_layer.digest).read_text() == LICENSE

    config = styled.config
    assert config.params == {"negative_prompt": "blurry", "steps": 4}
    assert config.adapters == (AdapterRecord(adapter_layer.digest, 0.8, "style.safetensors"),)
    assert config.base == "z-image:latest"
    assert config.total_size == sum(layer.size for layer in styled.layers)
    assert config.weights_only() == base.config.weights_only()
    raw_config = json.loads(store.blob_path(styled.config_digest).read_bytes())
    assert raw_config["adapters"] == [
        {"digest": adapter_layer.digest, "scale": 0.8, "name": "style.safetensors"}
    ]
    assert (
        raw_config["params"] == {"negative_prompt": "blurry", "steps": 4}
        and raw_config["base"] == "z-image:latest"
    )
    assert_store_consistent(store)


def test_an_adapter_file_is_stored_once_whatever_uses_it(store, base, cli, tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = write_adapter(tmp_path / "a" / "style.safetensors", seed=1)
    (tmp_path / "b" / "renamed.safetensors").write_bytes(first.read_bytes())
    write_modelfile(tmp_path / "one", "FROM z-image\nADAPTER a/style.safetensors\n")
    write_modelfile(tmp_path / "two", "FROM z-image\nADAPTER b/renamed.safetensors 0.5\nPARAMETER steps 3\n")
    ok(cli("create", "one", "-f", str(tmp_path / "one")))
    second = ok(cli("create", "two", "-f", str(tmp_path / "two")))
    assert "2 new blobs" in second.out  # its params and its config; the adapter blob was there
    one, two = store.manifest("one"), store.manifest("two")
    assert one.config.adapters[0].digest == two.config.adapters[0].digest == sha256_of(first)
    assert (one.config.adapters[0].name, two.config.adapters[0].name) == (
        "style.safetensors",
        "renamed.safetensors",
    )
    assert len([p for p in store.blobs_dir.iterdir() if p.read_bytes() == first.read_bytes()]) == 1
    again = ok(cli("create", "two", "-f", str(tmp_path / "two")))
    assert "0 new blobs" in again.out and store.manifest("two").raw == two.raw


def test_from_a_folder_and_adapter_paths_are_relative_to_the_modelfile(
    store, tiny_folder, cli, tmp_path, monkeypatch
):
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "Z").symlink_to(tiny_folder)
    write_adapter(tmp_path / "models" / "style.safetensors")
    path = write_modelfile(
        tmp_path / "recipes" / "Modelfile",
        "FROM ../models/Z\nADAPTER ../models/style.safetensors 0.3\nPARAMETER guidance 1.5\n",
    )
    monkeypatch.chdir(store.root.parent)  # elsewhere: the paths start at the Modelfile's folder
    ok(cli("create", "from-folder", "-f", str(path)))
    plain = import_folder(store, "plain", inspect_folder(tiny_folder)).manifest
    made = store.manifest("from-folder")
    assert made.weight_layers() == plain.layers
    assert made.config.weights_only() == plain.config.weights_only()
    assert made.config.base is None and made.config.params == {"guidance": 1.5}
    assert made.config.adapters[0].scale == 0.3
    assert_store_consistent(store)


def test_f_takes_a_folder_holding_a_modelfile_and_defaults_to_the_current_folder(
    store, base, cli, tmp_path, monkeypatch
):
    write_modelfile(tmp_path / "recipe" / "Modelfile", "FROM z-image\nPARAMETER steps 5\n")
    ok(cli("create", "by-folder", "-f", str(tmp_path / "recipe")))
    monkeypatch.chdir(tmp_path / "recipe")
    ok(cli("create", "by-default"))
    assert store.manifest("by-folder").raw == store.manifest("by-default").raw
    assert store.manifest("by-default").config.params == {"steps": 5}


def test_from_a_model_made_by_a_modelfile_keeps_its_adapters_parameters_and_license(
    store, styled, cli, tmp_path
):
    write_adapter(tmp_path / "detail.safetensors", seed=2)
    write_modelfile(
        tmp_path / "more",
        "FROM styled\nADAPTER detail.safetensors 0.5\nPARAMETER steps 6\nPARAMETER guidance 2\n",
    )
    ok(cli("create", "more", "-f", str(tmp_path / "more")))
    more = store.manifest("more")
    assert [(a.name, a.scale) for a in more.config.adapters] == [
        ("style.safetensors", 0.8),
        ("detail.safetensors", 0.5),
    ]
    assert more.config.adapters[0] == styled.config.adapters[0]  # the base's adapter, its blob shared
    assert more.config.params == {"steps": 6, "negative_prompt": "blurry", "guidance": 2.0}  # steps replaced
    assert more.config.base == "styled:latest"
    assert store.blob_path(more.layers_of_type(LICENSE_MEDIA_TYPE)[0].digest).read_text() == LICENSE
    assert more.weight_layers() == styled.weight_layers()

    write_modelfile(tmp_path / "relicensed", "FROM styled\nLICENSE Apache-2.0\n")
    ok(cli("create", "relicensed", "-f", str(tmp_path / "relicensed")))
    (layer,) = store.manifest("relicensed").layers_of_type(LICENSE_MEDIA_TYPE)
    assert store.blob_path(layer.digest).read_text() == "Apache-2.0"


def test_create_from_quantizes_and_keeps_what_the_modelfile_added(store, styled, cli):
    ok(cli("create", "styled-int8", "--from", "styled", "-q", "int8"))
    quantized = store.manifest("styled-int8")
    assert quantized.config.quantization.type == "int8"
    assert (
        quantized.config.adapters == styled.config.adapters
        and quantized.config.params == styled.config.params
    )
    assert [la.media_type for la in quantized.layers if la.from_modelfile] == [
        ADAPTER_MEDIA_TYPE,
        PARAMS_MEDIA_TYPE,
        LICENSE_MEDIA_TYPE,
    ]
    assert not any(la.name in ("params", "license") and not la.from_modelfile for la in quantized.layers)


def test_a_modelfile_with_quantize_quantizes_its_base_and_adds_the_rest(store, base, cli, tmp_path):
    write_adapter(tmp_path / "style.safetensors")
    path = write_modelfile(
        tmp_path / "Modelfile", "FROM z-image\nADAPTER style.safetensors\nPARAMETER steps 3\n"
    )
    ok(cli("create", "small", "-f", str(path), "-q", "int8"))
    small = store.manifest("small")
    assert small.config.quantization.type == "int8" and small.config.params == {"steps": 3}
    assert small.config.base == "z-image:latest" and small.config.adapters[0].name == "style.safetensors"
    assert len(small.weight_layers()) == len(base.layers) and small.weight_layers() != base.layers
    assert_store_consistent(store)


@pytest.mark.parametrize(
    ("modelfile", "message"),
    [
        (
            "FROM z-image\n\nADAPTER missing.safetensors\n",
            "Modelfile line 3: adapter file {tmp}/missing.safetensors does not exist",
        ),
        ("FROM z-image\nADAPTER notes.txt\n", "Modelfile line 2: corrupt safetensors file {tmp}/notes.txt"),
        ("FROM z-image\nADAPTER sub\n", "Modelfile line 2: adapter {tmp}/sub is not a file"),
        (
            "FROM z-imag\n",
            "Modelfile line 1: model 'z-imag:latest' not found (did you mean 'z-image:latest'?)",
        ),
        ("# x\nFROM ./nowhere\n", "Modelfile line 2: model folder {tmp}/nowhere does not exist"),
        ("FROM notes.txt\n", "Modelfile line 1: {tmp}/notes.txt is a file: FROM takes a model folder"),
        (
            "FROM z-image\nPARAMETER width 8208\n",
            "Modelfile line 2: width must be at most 8192 for this model",
        ),
        ("FROM z-image\nPARAMETER steps -2\n", 'Modelfile line 2: parameter "steps" must be at least 1'),
        (
            "FROM sha256:" + "0" * 64 + "\n",
            "Modelfile line 1: no model in the store has the digest sha256:000",
        ),
    ],
)
def test_mistakes_at_create_name_the_line_and_change_nothing(store, base, cli, tmp_path, modelfile, message):
    (tmp_path / "notes.txt").write_text("not a safetensors file, but long enough to have a header length")
    (tmp_path / "sub").mkdir()
    path = write_modelfile(tmp_path / "Modelfile", modelfile)
    before = snapshot(store.root)
    result = cli("create", "new", "-f", str(path))
    assert result.code == 1 and result.out == ""
    lines = result.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: " + message.format(tmp=tmp_path)), result.err
    assert snapshot(store.root) == before


def test_a_parameter_the_family_lacks_is_refused_with_its_line(store, cli, tmp_path):
    from tests.fixtures.flux2_folder import TINY, build_flux2_folder

    ok(cli("create", "klein", "-f", str(build_flux2_folder(tmp_path / "folders" / "FLUX.2-klein", TINY))))
    for line, name in (("negative_prompt fog", "negative_prompt"), ("teacache 0.3", "teacache")):
        path = write_modelfile(tmp_path / "Modelfile", f"FROM klein\nPARAMETER steps 2\nPARAMETER {line}\n")
        result = cli("create", "k2", "-f", str(path))
        assert result.code == 1
        assert (
            result.err
            == f"Error: Modelfile line 3: model 'klein:latest' does not take parameter \"{name}\"\n"
        )
    ok(
        cli(
            "create",
            "k2",
            "-f",
            str(write_modelfile(tmp_path / "Modelfile", "FROM klein\nPARAMETER steps 2\n")),
        )
    )


# -- show ------------------------------------------------------------------------------------------


def test_show_lists_adapters_parameters_and_license(store, styled, cli):
    shown = ok(cli("show", "styled")).out
    adapter = styled.config.adapters[0]
    assert re.search(rf"Adapters\n\s+style\.safetensors\s+{adapter.digest[7:19]}\s+scale 0\.8\n", shown), (
        shown
    )
    assert re.search(r"Parameters\n\s+steps\s+4\n\s+negative_prompt\s+\"blurry\"\n", shown), shown
    assert re.search(r"License\n\s+MIT License\n", shown), shown
    doc = json.loads(ok(cli("show", "styled", "--json")).out)
    assert doc["parameters"] == {"negative_prompt": "blurry", "steps": 4}
    assert doc["adapters"] == [{"digest": adapter.digest, "scale": 0.8, "name": "style.safetensors"}]
    assert doc["license"] == [LICENSE]
    assert doc["config"]["base"] == "z-image:latest"
    plain = ok(cli("show", "z-image")).out
    assert "Adapters" not in plain and "Parameters" not in plain and "License" not in plain


def recreate(cli, store, tmp_path, name: str, again: str):
    """`show --modelfile NAME`, then `create AGAIN` from it: the two manifests."""
    text = ok(cli("show", name, "--modelfile")).out
    ok(cli("create", again, "-f", str(write_modelfile(tmp_path / f"{again}.Modelfile", text))))
    return text, store.manifest(name), store.manifest(again)


def test_show_modelfile_recreates_the_same_manifest(store, styled, cli, tmp_path):
    text, shown, made = recreate(cli, store, tmp_path, "styled", "again")
    blob = store.blob_path(styled.config.adapters[0].digest)
    assert text.splitlines()[1:] == [
        "FROM z-image:latest",
        f"ADAPTER {blob} 0.8",
        "PARAMETER steps 4",
        'PARAMETER negative_prompt "blurry"',
        'LICENSE """MIT License',
        "",
        'Copyright "someone"',
        '"""',
    ]
    assert made.raw == shown.raw  # the same layers, digests, config: the same model ID


def test_a_model_without_a_base_name_comes_back_from_its_digest(store, base, cli, tmp_path, tiny_folder):
    text, shown, made = recreate(cli, store, tmp_path, "z-image", "z-again")  # imported from a folder
    assert f"FROM {base.digest}\n" in text and made.raw == shown.raw
    write_modelfile(tmp_path / "f" / "Modelfile", f'FROM {tiny_folder}\nLICENSE "ends with a quote\\""\n')
    ok(cli("create", "from-folder", "-f", str(tmp_path / "f")))
    text, shown, made = recreate(cli, store, tmp_path, "from-folder", "from-folder-again")
    assert f"FROM {shown.digest}\n" in text and made.raw == shown.raw


def test_the_round_trip_outlives_the_base_and_follows_a_chain_of_bases(store, styled, cli, tmp_path):
    write_adapter(tmp_path / "detail.safetensors", seed=3)
    write_modelfile(tmp_path / "more", "FROM styled\nADAPTER detail.safetensors 0.25\nPARAMETER seed 9\n")
    ok(cli("create", "more", "-f", str(tmp_path / "more")))
    text, shown, made = recreate(cli, store, tmp_path, "more", "more-again")
    assert "FROM styled:latest\n" in text and text.count("ADAPTER ") == 1  # the base's adapter comes with it
    assert made.raw == shown.raw

    ok(cli("rm", "styled"))  # the base is gone: its weights are named by the model's own digest
    text, shown, made = recreate(cli, store, tmp_path, "more", "more-again-2")
    assert f"FROM {shown.digest}\n" in text and text.count("ADAPTER ") == 2
    assert made.raw == shown.raw


# -- failures and crashes leave the store as it was ------------------------------------------------


def test_a_write_failure_leaves_no_blob_and_no_manifest(store, base, cli, tmp_path, monkeypatch):
    import errno

    from ollama_img.store import blobs

    write_adapter(tmp_path / "style.safetensors")
    path = write_modelfile(
        tmp_path / "Modelfile", "FROM z-image\nADAPTER style.safetensors\nPARAMETER steps 2\n"
    )
    before = snapshot(store.blobs_dir)
    real = blobs._write_all
    calls = []

    def full_disk(fd, data, where):
        calls.append(len(data))
        if len(calls) == 2:  # the params blob, after the adapter's
            raise blobs.store_write_error(OSError(errno.ENOSPC, "No space left on device"), where)
        real(fd, data, where)

    monkeypatch.setattr(blobs, "_write_all", full_disk)
    result = cli("create", "new", "-f", str(path))
    assert result.code == 1 and "no space left on the device" in result.err
    assert not store.exists("new") and not list(store.root.rglob(".tmp-*"))
    # the adapter blob already written is whole and named by its bytes; nothing else was added
    added = set(snapshot(store.blobs_dir)) - set(before)
    assert added == {"sha256-" + sha256_of(tmp_path / "style.safetensors")[7:]}
    assert_store_consistent(store)


@pytest.mark.parametrize("point", ["write:1", "fsync:1", "fsync:3", "replace:1"])
def test_a_create_killed_at_any_point_leaves_a_consistent_store_and_a_rerun_completes(
    store, base, cli, tmp_path, point
):
    write_adapter(tmp_path / "style.safetensors")
    path = write_modelfile(
        tmp_path / "Modelfile", "FROM z-image\nADAPTER style.safetensors\nPARAMETER steps 2\nLICENSE x\n"
    )
    process = _spawn(store, "create", "styled", "-f", str(path), point=point)
    process.communicate(timeout=60)
    assert process.returncode == -signal.SIGKILL
    assert_store_consistent(store)
    assert not store.exists("styled") and store.manifest("z-image").raw == base.raw
    ok(cli("create", "styled", "-f", str(path)))
    ok(cli("create", "reference", "-f", str(path)))
    assert store.manifest("styled").raw == store.manifest("reference").raw
    assert not list(store.root.rglob(".tmp-*"))
    assert_store_consistent(store)


# -- garbage collection ----------------------------------------------------------------------------


def test_rm_frees_what_only_the_removed_model_used(store, styled, cli, tmp_path):
    adapter = styled.config.adapters[0].digest
    write_modelfile(
        tmp_path / "other", f"FROM z-image\nADAPTER {store.blob_path(adapter)} 0.2\nPARAMETER steps 7\n"
    )
    ok(cli("create", "other", "-f", str(tmp_path / "other")))
    assert store.manifest("other").config.adapters[0].name == "style.safetensors"  # the name the store knows
    params, license_ = (styled.layers_of_type(t)[0].digest for t in (PARAMS_MEDIA_TYPE, LICENSE_MEDIA_TYPE))

    removed = ok(cli("rm", "styled"))
    assert "(3 blobs)" in removed.out  # its params, its license, its config
    for digest in (params, license_, styled.config_digest):
        assert not store.blob_path(digest).exists()
    assert store.blob_path(adapter).exists()  # still used by `other`
    assert all(store.blob_path(d).exists() for d in store.manifest("z-image").digests())

    ok(cli("rm", "z-image"))  # the base goes; its weights stay, `other` uses them
    assert all(store.blob_path(d).exists() for d in store.manifest("other").digests())
    ok(cli("rm", "other"))
    assert not any(p.name.startswith("sha256-") for p in store.blobs_dir.iterdir())


# -- parameters as defaults ------------------------------------------------------------------------


def test_load_pipeline_takes_the_models_parameters_as_its_defaults(store, base, cli, tmp_path):
    from ollama_img import load_pipeline

    write_modelfile(
        tmp_path / "Modelfile",
        "FROM z-image\nPARAMETER steps 2\nPARAMETER width 32\nPARAMETER height 48\nPARAMETER seed 5\n"
        "PARAMETER guidance 1.5\nPARAMETER negative_prompt fog\n",
    )
    ok(cli("create", "recipe", "-f", str(tmp_path / "Modelfile")))
    pipe, plain = load_pipeline("recipe", store=store), load_pipeline("z-image", store=store)
    assert (pipe.defaults.width, pipe.defaults.height, pipe.defaults.steps, pipe.defaults.guidance) == (
        32,
        48,
        2,
        1.5,
    )
    assert pipe.defaults.strength == plain.defaults.strength  # not set: the family's
    assert pipe.size_for() == (32, 48) and plain.size_for() == (1024, 1024)
    assert pipe.digest == store.manifest("recipe").digest
    ours = np.asarray(pipe.generate("a red fox"))
    theirs = np.asarray(
        plain.generate("a red fox", width=32, height=48, steps=2, seed=5, guidance=1.5, negative_prompt="fog")
    )
    assert ours.shape == (48, 32, 3) and np.array_equal(ours, theirs)
    asked = np.asarray(pipe.generate("a red fox", width=16, steps=1, seed=2, guidance=0.0))
    expected = np.asarray(plain.generate("a red fox", width=16, height=48, steps=1, seed=2, guidance=0.0))
    assert np.array_equal(asked, expected)  # what the caller gives wins


def test_a_models_parameters_fill_only_what_the_request_leaves_out():
    model = {"steps": 3, "width": 32, "height": 48, "seed": 11, "negative_prompt": "fog", "strength": 0.5}
    plain = with_model_params(generate_params({}, "m:latest", "a cat"), model)
    assert (plain.steps, plain.width, plain.height, plain.seed, plain.negative_prompt) == (
        3,
        32,
        48,
        11,
        "fog",
    )
    assert plain.strength is None  # a strength is for a start image
    asked = with_model_params(
        generate_params({"steps": 1, "width": 64, "seed": 0}, "m:latest", "a cat"), model
    )
    assert (asked.steps, asked.width, asked.height, asked.seed) == (1, 64, 48, 0)
    assert with_model_params(generate_params({}, "m:latest", "a cat"), {"later_option": 1}).steps is None
    with pytest.raises(UserError, match="the model's parameter 'steps' must be at least 1, got 0"):
        with_model_params(generate_params({}, "m:latest", "a cat"), {"steps": 0})  # a pulled model's


def png_of(b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64)))


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_folder):
    env = EngineEnv(tmp_path_factory.mktemp("modelfile-engine"))
    try:
        assert env.cli("create", "z-image", "-f", str(tiny_folder)).returncode == 0
        write_modelfile(
            env.work / "Modelfile",
            "FROM z-image\nPARAMETER steps 2\nPARAMETER width 32\nPARAMETER height 48\n"
            "PARAMETER negative_prompt fog\nPARAMETER seed 7\nPARAMETER strength 0.5\n",
        )
        created = env.cli("create", "quick", "-f", "Modelfile")
        assert created.returncode == 0, created.stderr
        env.start_engine()
        yield env
    finally:
        env.close()


def generate(world, **body) -> dict:
    with world.http() as http:
        answer = http.post("/api/generate", json={"prompt": "a red fox", "stream": False, **body})
    assert answer.status_code == 200, answer.text
    return answer.json()


def test_request_over_model_over_family_through_the_engine(world):
    model = generate(world, model="quick")  # the model's parameters
    assert (model["steps"], model["width"], model["height"], model["seeds"]) == (2, 32, 48, [7])
    image = png_of(model["images"][0])
    assert image.size == (32, 48) and image.text["negative_prompt"] == "fog" and image.text["steps"] == "2"

    asked = generate(world, model="quick", steps=1, width=64, seed=3, negative_prompt="rain")  # the request's
    assert (asked["steps"], asked["width"], asked["height"], asked["seeds"]) == (1, 64, 48, [3])
    assert png_of(asked["images"][0]).text["negative_prompt"] == "rain"

    family = generate(world, model="z-image", width=32, height=32)  # no Modelfile: the family's recipe
    assert family["steps"] == 9 and family["seeds"] != [7]

    start = io.BytesIO()
    picture(64, 80).save(start, format="PNG")
    edited = generate(world, model="quick", images=[base64.b64encode(start.getvalue()).decode()])
    image = png_of(edited["images"][0])
    assert image.size == (64, 80)  # the image's size: the model's is only a default
    assert float(image.text["strength"]) == 0.5  # the model's strength, with a start image


def test_the_openai_route_and_run_take_the_models_parameters(world):
    with world.http() as http:
        answer = http.post("/v1/images/generations", json={"model": "quick", "prompt": "a red fox"})
    assert answer.status_code == 200, answer.text
    assert png_of(answer.json()["data"][0]["b64_json"]).size == (32, 48)
    run = world.cli("run", "quick", "a red fox")
    assert run.returncode == 0, run.stderr
    (path,) = re.findall(r"^Image saved to: (.+)$", run.stdout, re.M)
    text = read_png_text(path)
    assert (text["size"], text["steps"], text["seed"], text["negative_prompt"]) == ("32x48", "2", "7", "fog")


def test_api_show_returns_parameters_adapters_and_the_modelfile(world):
    with world.http() as http:
        shown = http.post("/api/show", json={"model": "quick"}).json()
        plain = http.post("/api/show", json={"model": "z-image"}).json()
    assert shown["parameters"] == 'width 32\nheight 48\nsteps 2\nnegative_prompt "fog"\nstrength 0.5\nseed 7'
    assert shown["adapters"] == [] and shown["license"] == ""
    assert "FROM z-image:latest\n" in shown["modelfile"] and "PARAMETER seed 7\n" in shown["modelfile"]
    assert shown["model_info"]["params"]["steps"] == 2 and shown["model_info"]["base"] == "z-image:latest"
    assert plain["parameters"] == "" and "params" not in plain["model_info"]


# -- push and pull ---------------------------------------------------------------------------------


def test_push_then_pull_carries_the_adapter_params_and_license(registry, store, base, cli, tmp_path):
    from ollama_img.transfer.registry.pull import pull_model
    from ollama_img.transfer.registry.push import push_model

    adapter = write_adapter(tmp_path / "style.safetensors", seed=4)
    name = f"{registry.host}/team/styled:v1"
    path = write_modelfile(
        tmp_path / "Modelfile",
        "FROM z-image\nADAPTER style.safetensors 0.6\nPARAMETER steps 3\nLICENSE MIT\n",
    )
    ok(cli("create", name, "-f", str(path)))
    source = store.manifest(name)
    pushed = push_model(store, name)
    assert pushed.blobs == len(source.digests())

    empty = Store(tmp_path / "empty")
    pulled = pull_model(empty, name)
    assert pulled.fetched == pulled.blobs == pushed.blobs
    manifest = empty.manifest(name)
    assert manifest.raw == source.raw  # the same model ID on both machines
    assert manifest.config.adapters == source.config.adapters and manifest.config.params == {"steps": 3}
    assert empty.blob_path(manifest.config.adapters[0].digest).read_bytes() == adapter.read_bytes()
    assert snapshot(empty.blobs_dir) == {
        k: v
        for k, v in snapshot(store.blobs_dir).items()
        if k.removeprefix("sha256-") in {d[7:] for d in source.digests()}
    }
    assert_store_consistent(empty)
