"""The shared Qwen3 text encoder against transformers: any layers' hidden states, padded prompts, and the
causal-LM checkpoint layout (`model.` prefix, `lm_head`) loaded strictly."""

import json

import mlx.core as mx
import numpy as np
import pytest

from ollama_img.models.configs import Qwen3Config
from ollama_img.models.loading import ComponentLoader
from ollama_img.models.qwen3 import Qwen3TextEncoder
from ollama_img.weights import FolderSource

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

LAYERS = 4


@pytest.fixture(scope="module")
def causal_lm(tmp_path_factory):
    """A tiny Qwen3ForCausalLM saved by transformers as the text_encoder of a model folder."""
    torch.manual_seed(0)
    config = transformers.Qwen3Config(
        vocab_size=96,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=LAYERS,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        rope_theta=1_000_000.0,
        tie_word_embeddings=False,
    )
    model = transformers.Qwen3ForCausalLM(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))  # norms off 1, so the final norm matters
    root = tmp_path_factory.mktemp("qwen3")
    (root / "model_index.json").write_text(json.dumps({"_class_name": "ZImagePipeline"}))
    model.save_pretrained(root / "text_encoder", safe_serialization=True)
    return model, root


def ours(root, hidden_layers):
    source = FolderSource(root)
    loader = ComponentLoader(source, dtype=mx.float32)
    cfg = loader.config(Qwen3Config.from_dict, "text_encoder/config.json")
    return loader.load("text_encoder", Qwen3TextEncoder(cfg, hidden_layers))


def reference(model, ids, mask, layers) -> np.ndarray:
    """diffusers' way (Flux2KleinPipeline): the chosen hidden states stacked, then flattened per token."""
    with torch.no_grad():
        out = model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), output_hidden_states=True)
    stacked = torch.stack([out.hidden_states[k] for k in layers], dim=1)
    b, n, length, d = stacked.shape
    return stacked.permute(0, 2, 1, 3).reshape(b, length, n * d).numpy()


def rel_err(a, b) -> float:
    return float(np.abs(np.asarray(a, np.float64) - b).max() / np.abs(b).max())


IDS = [[5, 17, 33, 2, 64, 8, 91, 40, 12]]


@pytest.mark.parametrize("layers", [(-2,), (0,), (1, 2, 3), (2, -1), (LAYERS,)])
def test_hidden_states_of_any_layers_match_transformers(causal_lm, layers):
    model, root = causal_lm
    encoder = ours(root, layers)
    mask = [[1] * len(IDS[0])]
    want = reference(model, IDS, mask, layers)
    got = np.array(encoder(mx.array(IDS)))
    assert got.shape == want.shape
    assert rel_err(got, want) < 1e-5


def test_only_the_layers_needed_are_built(causal_lm):
    _, root = causal_lm
    assert len(ours(root, (-2,)).layers) == LAYERS - 1 and "norm" not in ours(root, (-2,))
    assert len(ours(root, (1, 2)).layers) == 2
    assert "norm" in ours(root, (-1,))


def test_padded_prompts_match_with_their_attention_mask(causal_lm):
    """Right-padded to a fixed length, as FLUX.2 [klein] feeds its prompts: every position matches."""
    model, root = causal_lm
    pad = 0
    ids = [IDS[0] + [pad] * 7, IDS[0][:4] + [pad] * 12]
    mask = [[1] * 9 + [0] * 7, [1] * 4 + [0] * 12]
    layers = (1, 3)
    want = reference(model, ids, mask, layers)
    got = np.array(ours(root, layers)(mx.array(ids), mx.array(mask)))
    assert rel_err(got, want) < 1e-5
    unpadded = np.array(ours(root, layers)(mx.array([IDS[0][:4]])))
    np.testing.assert_allclose(got[1, :4], unpadded[0], rtol=1e-5, atol=1e-6)


def test_layer_numbers_out_of_range_are_refused():
    with pytest.raises(ValueError, match="hidden layers must be in"):
        Qwen3TextEncoder(Qwen3Config(num_hidden_layers=2, hidden_size=8, head_dim=4), (3,))
