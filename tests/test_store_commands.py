"""`create`, `list`, `show`, `rm`, `cp` through the real CLI entry point, on a store in a temp dir."""

import json
import os
import re
import time

from ollama_img.formatting import human_age, human_bytes, human_count
from tests.conftest import assert_store_consistent, snapshot


def test_create_prints_plain_progress_and_a_summary(store, cli, tiny_folder):
    result = cli("create", "z-image", "-f", str(tiny_folder))
    assert result.code == 0, result.err
    assert re.fullmatch(
        r"created 'z-image:latest' in \d+\.\ds: 376 tensors, 2\.3 MB, 386 new blobs, 0 reused blobs\n",
        result.out,
    )
    lines = result.err.splitlines()
    assert lines[0].startswith("importing 'z-image:latest' from ") and "376 tensors" in lines[0]
    assert lines[-1].split() == ["100%", "2.2", "MB", "of", "2.2", "MB,", "376/376", "tensors"]
    again = cli("create", "copy", "-f", str(tiny_folder))
    assert "0 new blobs, 386 reused blobs" in again.out


def test_create_defaults_to_the_current_folder(store, cli, tiny_folder, monkeypatch):
    monkeypatch.chdir(tiny_folder)
    assert cli("create", "here").code == 0
    assert [str(n) for n in store.names()] == ["here:latest"]


def test_list_shows_name_id_family_size_modified(store, cli, tiny_folder):
    cli("create", "z-image", "-f", str(tiny_folder))
    cli("cp", "z-image", "me/z-image:v1")
    old = time.time() - 3 * 3600
    os.utime(store.manifest_path("z-image"), (old, old))
    out = cli("list").out.splitlines()
    assert out[0].split() == ["NAME", "ID", "FAMILY", "SIZE", "MODIFIED"]
    manifest = store.manifest("z-image")
    assert out[1].split() == [
        "me/z-image:v1",
        manifest.id,
        "z-image",
        "2.3",
        "MB",
        "Less",
        "than",
        "a",
        "second",
        "ago",
    ]
    assert out[2].split() == ["z-image:latest", manifest.id, "z-image", "2.3", "MB", "3", "hours", "ago"]
    assert out[0].index("ID") == out[1].index(manifest.id)  # aligned columns


def test_list_on_an_empty_store_prints_only_the_heading(store, cli):
    result = cli("list")
    assert (result.code, result.out.split()) == (0, ["NAME", "ID", "FAMILY", "SIZE", "MODIFIED"])
    assert not store.root.exists()


def test_show_text_and_json(store, cli, tiny_folder):
    cli("create", "z-image", "-f", str(tiny_folder))
    manifest = store.manifest("z-image")
    text = cli("show", "z-image").out
    assert re.search(r"architecture\s+ZImagePipeline", text)
    assert re.search(r"parameters\s+1\.1M", text)
    assert re.search(r"family\s+z-image", text)
    assert re.search(r"quantization\s+none", text)
    assert re.search(r"sizes\s+multiples of 16, up to 8192x8192", text)
    assert re.search(
        r"options\s+guidance, negative prompt, start image and strength, mask, TeaCache, LoRA\n", text
    )
    assert re.search(r"transformer\s+ZImageTransformer2DModel\s+706\.1K\s+1\.4 MB\s+BF16", text)
    assert re.search(r"tokenizer\s+Qwen2Tokenizer\s+-\s+36 KB\s+-", text)
    doc = json.loads(cli("show", "z-image", "--json").out)
    assert doc["name"] == "z-image:latest" and doc["id"] == manifest.id
    assert doc["digest"] == manifest.digest and doc["size"] == manifest.total_size
    assert doc["config"] == manifest.config.to_json() and doc["layers"] == len(manifest.layers)


def test_cp_shares_every_blob(store, cli, tiny_folder):
    cli("create", "z-image", "-f", str(tiny_folder))
    blobs = sorted(store.blobs_dir.iterdir())
    result = cli("cp", "z-image", "registry.example.com/team/z:turbo")
    assert (result.code, result.out) == (
        0,
        "copied 'z-image:latest' to 'registry.example.com/team/z:turbo'\n",
    )
    assert sorted(store.blobs_dir.iterdir()) == blobs
    assert store.manifest("registry.example.com/team/z:turbo").digest == store.manifest("z-image").digest
    assert cli("rm", "z-image").code == 0
    assert_store_consistent(store)
    assert cli("show", "registry.example.com/team/z:turbo").code == 0


def test_rm_frees_only_blobs_no_other_model_uses(store, cli, folder_copy, tiny_folder):
    """Two models that differ in one file share every other blob."""
    cli("create", "a", "-f", str(tiny_folder))
    config = json.loads((folder_copy / "scheduler/scheduler_config.json").read_text())
    config["shift"] = 6.0
    (folder_copy / "scheduler/scheduler_config.json").write_text(json.dumps(config))
    cli("create", "b", "-f", str(folder_copy))
    a, b = store.manifest("a"), store.manifest("b")
    only_a = a.digests() - b.digests()
    assert len(only_a) == 2  # the scheduler config and the model config blob
    freed = sum(store.blob_path(d).stat().st_size for d in only_a)

    result = cli("rm", "a")
    assert result.code == 0
    assert result.out.splitlines() == ["deleted 'a:latest'", f"freed {human_bytes(freed)} (2 blobs)"]
    assert not any(store.blob_path(d).exists() for d in only_a)
    assert all(store.blob_path(d).exists() for d in b.digests())
    assert_store_consistent(store)

    result = cli("rm", "b")
    assert result.out.splitlines() == ["deleted 'b:latest'", f"freed {human_bytes(b.total_size)} (386 blobs)"]
    assert list(store.blobs_dir.iterdir()) == []
    assert store.names() == []


def test_rm_of_a_model_whose_blobs_another_uses_frees_nothing(store, cli, tiny_folder):
    cli("create", "a", "-f", str(tiny_folder))
    cli("create", "b", "-f", str(tiny_folder))
    result = cli("rm", "a")
    assert result.out.splitlines() == [
        "deleted 'a:latest'",
        "freed nothing: other models still use all of its blobs",
    ]
    assert len(list(store.blobs_dir.iterdir())) == 386
    assert_store_consistent(store)


def test_rm_several_names_and_sweeps_leftover_temporary_files(store, cli, tiny_folder):
    cli("create", "a", "-f", str(tiny_folder))
    cli("cp", "a", "b")
    (store.blobs_dir / ".tmp-left-by-a-killed-create").write_bytes(b"x" * 1000)
    result = cli("rm", "a", "b", "a")
    assert result.out.splitlines()[:2] == ["deleted 'a:latest'", "deleted 'b:latest'"]
    assert list(store.blobs_dir.iterdir()) == []
    assert not (store.manifests_dir / "registry.ollama.ai").exists()  # empty folders pruned


def test_human_formats():
    sizes = (0, 999, 1000, 2_314_560, 9_999_999, 10_000_000, 9_960, 999_999, 12_400_000_000, 20_600_000_000)
    assert [human_bytes(n) for n in sizes] == [
        "0 B",
        "999 B",
        "1 KB",
        "2.3 MB",
        "10 MB",
        "10 MB",
        "10 KB",
        "999 KB",
        "12 GB",
        "20 GB",
    ]
    counts = (12, 999, 1_100, 53_056, 999_949, 999_999, 999_950_000, 6_154_908_736)
    assert [human_count(n) for n in counts] == [
        "12",
        "999",
        "1.1K",
        "53.1K",
        "999.9K",
        "1.0M",
        "1.0B",
        "6.2B",
    ]
    now = 1_000_000.0
    ages = [0.2, 5, 61, 150, 3700, 3 * 3600, 86400 * 1.5, 86400 * 3, 86400 * 15, 86400 * 65, 86400 * 800]
    assert [human_age(now - a, now) for a in ages] == [
        "Less than a second ago",
        "5 seconds ago",
        "About a minute ago",
        "2 minutes ago",
        "About an hour ago",
        "3 hours ago",
        "About a day ago",
        "3 days ago",
        "2 weeks ago",
        "2 months ago",
        "2 years ago",
    ]


def test_a_damaged_manifest_is_listed_shown_as_an_error_and_removable(store, cli, tiny_folder):
    cli("create", "good", "-f", str(tiny_folder))
    cli("cp", "good", "bad")
    store.manifest_path("bad").write_text("{ truncated")
    listing = cli("list").out.splitlines()
    assert listing[1].split()[:3] == ["bad:latest", "?", "?"] and "damaged" in listing[1]
    shown = cli("show", "bad")
    assert shown.code == 1 and shown.err.startswith("Error: corrupt manifest bad:latest")
    assert len(shown.err.splitlines()) == 1
    assert cli("rm", "bad").out.splitlines()[0] == "deleted 'bad:latest'"
    assert cli("show", "good").code == 0
    assert_store_consistent(store)


def _two_models(store, cli, tiny_folder, folder_copy, first="a", second="b"):
    """`first` from the tiny folder and `second` from a copy that differs in the scheduler config."""
    assert cli("create", first, "-f", str(tiny_folder)).code == 0
    config = json.loads((folder_copy / "scheduler/scheduler_config.json").read_text())
    config["shift"] = 6.0
    (folder_copy / "scheduler/scheduler_config.json").write_text(json.dumps(config))
    assert cli("create", second, "-f", str(folder_copy)).code == 0
    return store.manifest(first), store.manifest(second)


def test_rm_changes_nothing_while_another_manifest_is_unreadable(store, cli, tiny_folder, folder_copy):
    a, b = _two_models(store, cli, tiny_folder, folder_copy)
    cli("cp", "a", "bad")
    store.manifest_path("bad").write_text("{ truncated")
    before = snapshot(store.root)
    result = cli("rm", "b")
    assert (result.code, result.out) == (1, "")
    assert result.err.splitlines() == [
        "Error: not removing 'b:latest': the manifest of 'bad:latest' is unreadable "
        "(Expecting property name enclosed in double quotes: line 1 column 3 (char 2)); "
        "remove it with 'ollama-img rm bad:latest'"
    ]
    assert snapshot(store.root) == before
    # Removing the damaged model itself works, alone or with others.
    result = cli("rm", "bad", "b")
    assert result.code == 0, result.err
    assert result.out.splitlines()[:2] == ["deleted 'bad:latest'", "deleted 'b:latest'"]
    assert [str(n) for n in store.names()] == ["a:latest"]
    assert not any(store.blob_path(d).exists() for d in b.digests() - a.digests())
    assert_store_consistent(store)


def test_cp_onto_an_existing_model_frees_the_blobs_only_it_used(store, cli, tiny_folder, folder_copy):
    a, b = _two_models(store, cli, tiny_folder, folder_copy)
    only_b = b.digests() - a.digests()
    assert len(only_b) == 2 and all(store.blob_path(d).exists() for d in only_b)
    result = cli("cp", "a", "b")
    assert (result.code, result.out) == (0, "copied 'a:latest' to 'b:latest'\n")
    assert store.manifest("b").raw == a.raw
    assert not any(store.blob_path(d).exists() for d in only_b)
    assert sorted(p.name for p in store.blobs_dir.iterdir()) == sorted(
        store.blob_path(d).name for d in a.digests()
    )
    assert_store_consistent(store)


def test_create_over_a_name_succeeds_while_another_manifest_is_unreadable(
    store, cli, tiny_folder, folder_copy
):
    old, _ = _two_models(store, cli, tiny_folder, folder_copy, first="x", second="other")
    cli("cp", "x", "bad")
    store.manifest_path("bad").write_text("[]")
    result = cli(
        "create", "x", "-f", str(folder_copy)
    )  # the other model's bytes: x's config blob is left over
    assert result.code == 0, result.err
    assert "Error" not in result.err
    assert result.out.startswith("created 'x:latest'") and "freed" not in result.out
    assert store.manifest("x").raw == store.manifest("other").raw
    # Which blobs 'bad' uses cannot be told, so none were collected; 'rm bad' collects them later.
    assert store.blob_path(old.config_digest).exists()
    assert cli("rm", "bad").code == 0
    assert not store.blob_path(old.config_digest).exists()
    assert_store_consistent(store)
