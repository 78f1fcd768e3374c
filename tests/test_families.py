"""The architecture table and the pipeline interface every family satisfies."""

import importlib
import json

import pytest

from ollama_img import load_pipeline
from ollama_img.models import ARCHITECTURES, architecture_for, size_unit
from ollama_img.models.interface import Capabilities, ImagePipeline, SizeLimits


def read_json_of(folder):
    return lambda relpath: json.loads((folder / relpath).read_text())


@pytest.mark.parametrize("class_name", sorted(ARCHITECTURES))
def test_every_family_declares_what_the_core_reads(class_name):
    arch = ARCHITECTURES[class_name]
    assert callable(importlib.import_module(arch.loader).load)
    names = {c.name for c in arch.components}
    assert len(names) == len(arch.components)
    if arch.quantization is not None:  # its rule names components the family has
        assert set(arch.quantization.patterns) <= names
    assert arch.size_unit % size_unit() == 0


def test_the_zimage_pipeline_satisfies_the_interface_with_its_folders_capabilities(tiny_folder):
    pipe = load_pipeline(tiny_folder)
    assert isinstance(pipe, ImagePipeline)
    expected = architecture_for("ZImagePipeline").capabilities(read_json_of(tiny_folder))
    assert pipe.capabilities == expected
    assert expected.sizes == SizeLimits(unit=16, max_width=16 * 512, max_height=16 * 512)
    assert (expected.guidance, expected.negative_prompt, expected.teacache) == (True, True, True)
    assert (expected.image_input, expected.mask, expected.image_inputs) == (True, True, 1)
    assert expected.lora and not expected.reference_images


def test_capabilities_round_trip_and_refuse_malformed_records():
    caps = Capabilities(sizes=SizeLimits(16, 2048, 1024), guidance=True, reference_images=4)
    assert Capabilities.from_json(json.loads(json.dumps(caps.to_json()))) == caps
    assert Capabilities.from_json({**caps.to_json(), "from_a_newer_version": True}) == caps
    older = {"sizes": {"unit": 16, "max_width": 2048, "max_height": 1024}, "guidance": True}
    assert Capabilities.from_json(older) == Capabilities(sizes=SizeLimits(16, 2048, 1024), guidance=True)
    for bad, problem in [
        ([], "not an object"),
        ({"sizes": {"unit": 0, "max_width": 1, "max_height": 1}}, "sizes"),
        ({**caps.to_json(), "teacache": "yes"}, "teacache 'yes'"),
        ({**caps.to_json(), "reference_images": -1}, "reference_images -1"),
        ({**caps.to_json(), "reference_images": True}, "reference_images True"),
    ]:
        with pytest.raises(ValueError, match=problem):
            Capabilities.from_json(bad)


@pytest.mark.parametrize(
    ("side", "value", "message"),
    [
        ("width", 24, "width must be a positive multiple of 16, got 24"),
        ("height", 0, "height must be a positive multiple of 16, got 0"),
        ("width", 2064, "width must be at most 2048 for this model, got 2064"),
        ("height", 1040, "height must be at most 1024 for this model, got 1040"),
        ("width", True, "width must be a positive multiple of 16, got True"),
    ],
)
def test_size_limits_name_the_side(side, value, message):
    limits = SizeLimits(16, 2048, 1024)
    with pytest.raises(ValueError, match=message):
        limits.check(side, value)
    limits.check(side, 1024)
