"""The tiny model folder is exactly what diffusers and transformers load: every tensor used, none missing."""

import json

import numpy as np
import pytest
from safetensors.numpy import load_file

from tests.fixtures.zimage_folder import TINY, build_zimage_folder

torch = pytest.importorskip("torch")


def _load_component_tensors(folder):
    tensors = {}
    for f in sorted(folder.glob("*.safetensors")):
        with open(f, "rb") as fh:
            data = fh.read()
        # bf16 is not a numpy dtype: read through torch's safetensors loader instead
        from safetensors.torch import load

        tensors.update({k: v.float().numpy() for k, v in load(data).items()})
    return tensors


@pytest.mark.parametrize("variant", ["bf16-inline-template", "f32-sharded-te-template-file"])
def test_diffusers_loads_every_tensor_of_the_fixture(tmp_path, variant):
    from diffusers import ZImagePipeline

    f32 = variant.startswith("f32")
    folder = build_zimage_folder(
        tmp_path / "m",
        TINY,
        dtype="float32" if f32 else "bfloat16",
        text_encoder_shards=2 if f32 else 1,
        chat_template_file=f32,
    )
    if f32:
        assert (folder / "text_encoder/model.safetensors.index.json").exists()
        assert (folder / "text_encoder/model-00002-of-00002.safetensors").exists()
        assert (folder / "tokenizer/chat_template.jinja").exists()
        assert "chat_template" not in json.loads((folder / "tokenizer/tokenizer_config.json").read_text())
        assert (
            load_file(folder / "vae/diffusion_pytorch_model.safetensors")["decoder.conv_in.weight"].dtype
            == np.float32
        )
    pipe = ZImagePipeline.from_pretrained(folder, dtype=torch.float32)

    for component in ("transformer", "text_encoder", "vae"):
        on_disk = _load_component_tensors(folder / component)
        on_disk = {k.removeprefix("model."): v for k, v in on_disk.items()}
        loaded = {k: v.float().numpy() for k, v in getattr(pipe, component).state_dict().items()}
        assert set(loaded) == set(on_disk), component
        for name, value in on_disk.items():
            np.testing.assert_array_equal(loaded[name], value, err_msg=f"{component}/{name}")

    text = pipe.tokenizer.apply_chat_template(
        [{"role": "user", "content": "a cat"}],
        tokenize=False,
        add_generation_prompt=True,
        enable_thinking=True,
    )
    assert text == "<|im_start|>user\na cat<|im_end|>\n<|im_start|>assistant\n"
    ids = pipe.tokenizer(text).input_ids
    assert ids[0] == pipe.tokenizer.convert_tokens_to_ids("<|im_start|>")
    assert max(ids) < pipe.text_encoder.config.vocab_size
