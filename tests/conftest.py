"""Shared fixtures: tiny model folders, built once per test session."""

import pytest

from tests.fixtures.zimage_folder import TINY, build_zimage_folder


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory):
    """A tiny Z-Image folder in the release layout (bf16, sharded transformer, inline chat template)."""
    return build_zimage_folder(tmp_path_factory.mktemp("tiny") / "Z-Image-Tiny", TINY)


@pytest.fixture(scope="session")
def reference_folder(tmp_path_factory):
    """A tiny float32 Z-Image folder written by diffusers' own save_pretrained."""
    pytest.importorskip("diffusers")
    from tests.fixtures.reference import build_reference_folder

    return build_reference_folder(tmp_path_factory.mktemp("ref") / "Z-Image-Ref")


@pytest.fixture(scope="session")
def reference_pipe(reference_folder):
    from tests.fixtures.reference import load_reference

    return load_reference(reference_folder)


@pytest.fixture(scope="session")
def mlx_pipe(reference_folder):
    from ollama_img import load_pipeline

    return load_pipeline(reference_folder)
