"""The first request's prompt encoded while the transformer's weights are read (`zimage.loader`).

On a GPU this moves the image thread's one-time GPU library set-up, and the prompt's encoding, into the
load. It must change nothing: the same weights, the same embedding, the same image as a load that
encodes nothing and a generation that encodes the prompt itself.
"""

import asyncio
import logging
import threading

import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_flatten

from ollama_img import loader as top_loader
from ollama_img.engine.jobs import DONE
from ollama_img.engine.params import GenerateParams
from ollama_img.engine.scheduler import Scheduler
from ollama_img.models import reading
from ollama_img.models.zimage.loader import load
from ollama_img.phases import recording
from ollama_img.store import Store, import_folder, inspect_folder
from ollama_img.weights import FolderSource

RECIPE = dict(width=32, height=32, steps=2, seed=5)


def weights(module) -> dict[str, np.ndarray]:
    return {k: np.array(v.astype(mx.float32)) for k, v in tree_flatten(module.parameters())}


def test_the_prompt_encoded_during_the_load_changes_nothing(tiny_folder):
    plain = load(FolderSource(tiny_folder))
    with recording() as timer:
        early = load(FolderSource(tiny_folder), prompts=("a paper boat", "", "a paper boat"))
    assert list(early._embeddings) == ["a paper boat"]  # once, and never the empty prompt
    assert "text" in timer.phases and "read" in timer.phases
    assert early.parts.is_loaded("transformer")
    for name in ("transformer", "text_encoder", "vae"):
        a, b = weights(getattr(plain, name)), weights(getattr(early, name))
        assert a.keys() == b.keys()
        assert all(np.array_equal(a[k], b[k]) for k in a), name
    encoded = (plain.encode_prompt("a paper boat"), early._embeddings["a paper boat"])
    assert np.array_equal(*(np.array(e.astype(mx.float32)) for e in encoded))  # bf16 on a GPU
    image = np.asarray(early.generate("a paper boat", **RECIPE))
    assert np.array_equal(image, np.asarray(plain.generate("a paper boat", **RECIPE)))


def test_a_plan_without_the_text_encoder_at_load_encodes_nothing_early(tiny_folder):
    from ollama_img.memory.budget import Budget
    from ollama_img.memory.device import device_kind
    from ollama_img.memory.plan import RESIDENT, Planner
    from ollama_img.models.zimage import ARCHITECTURE

    source = FolderSource(tiny_folder)
    planner = Planner(ARCHITECTURE.memory_of(source), device_kind(), Budget(1 << 40, "test"), label="tiny")
    plan = planner.for_load()
    assert plan.residency == RESIDENT
    on_demand = plan.__class__(**{**plan.__dict__, "holds": {**plan.holds, "load": ("transformer", "vae")}})
    pipe = load(source, plan=on_demand, prompts=("a paper boat",))
    assert not pipe._embeddings and not pipe.parts.is_loaded("text_encoder")


def test_an_encoding_that_fails_still_waits_for_the_read(tiny_folder, monkeypatch):
    from ollama_img.models.zimage.pipeline import ZImagePipeline

    finished = threading.Event()
    real_result = reading.Beside.result

    def result(self):
        value = real_result(self)
        finished.set()
        return value

    def broken(self, prompt):
        raise RuntimeError("the encoder failed")

    monkeypatch.setattr(reading.Beside, "result", result)
    monkeypatch.setattr(ZImagePipeline, "encode_prompt", broken)
    with pytest.raises(RuntimeError, match="the encoder failed"):
        load(FolderSource(tiny_folder), prompts=("a paper boat",))
    assert finished.is_set()  # no thread is left reading after the load gave up


def test_an_error_on_the_side_thread_is_raised_by_result():
    def fails():
        raise ValueError("unreadable")

    side = reading.Beside(fails)
    with pytest.raises(ValueError, match="unreadable"):
        side.result()
    assert reading.Beside(lambda: 41 + 1).result() == 42


def test_the_engine_hands_the_job_s_prompt_to_the_load(tmp_path, tiny_folder, monkeypatch, caplog):
    """On a GPU (`_overlaps_encoding`; the CPU has no set-up to hide, so it is asked for here) the job's
    prompt is encoded by the load, and its generation finds it made."""
    store = Store(tmp_path / "store")
    import_folder(store, "tiny", inspect_folder(tiny_folder))
    monkeypatch.setenv("OLLAMA_IMG_MODELS", str(store.root))
    monkeypatch.setattr(top_loader, "_overlaps_encoding", lambda: True)

    async def scenario():
        scheduler = Scheduler(default_keepalive=60)
        scheduler.start()
        try:
            job = scheduler.submit(GenerateParams(model="tiny:latest", prompt="a paper boat", **RECIPE), None)
            outcome = await asyncio.wait_for(job.outcome(), timeout=120)
            (model,) = scheduler.loaded_models()
            return outcome, list(model.pipe._embeddings)
        finally:
            await scheduler.close()

    with caplog.at_level(logging.INFO, logger="ollama_img.engine"):
        outcome, encoded = asyncio.run(scenario())
    assert outcome.kind == DONE and len(outcome.result.pngs) == 1
    assert encoded == ["a paper boat"]
    (loaded,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("loaded tiny")]
    assert "text " in loaded  # the load's phases count the encoding
