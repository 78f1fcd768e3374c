"""Warm-up after a load-only request, and the load phases in the engine log.

A warm-up must cost the person nothing (the load-only request is answered before it runs) and change
nothing (the next image is the one the model makes without it). On the CPU the pipeline asks for none
(nothing to compile), so the tests ask for one at a small size with OLLAMA_IMG_WARMUP=WxH.
"""

import asyncio
import contextlib
import io
import re
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ollama_img import load_pipeline
from ollama_img.engine.jobs import DONE
from ollama_img.engine.params import GenerateParams
from ollama_img.engine.scheduler import Scheduler
from ollama_img.engine.warmup import WarmUpPolicy
from ollama_img.store import Store, import_folder, inspect_folder
from tests.fixtures.engine_env import EngineEnv

SRC = str(Path(__file__).resolve().parent.parent / "src")


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def test_warm_up_leaves_the_next_image_unchanged(tiny_folder):
    pipe = load_pipeline(tiny_folder)
    assert pipe.benefits_from_warm_up is False  # the CPU has no kernels to compile
    recipe = dict(width=48, height=32, steps=2, seed=11)
    before = pixels(pipe.generate("a paper boat", **recipe))
    pipe.warm_up(width=48, height=32)
    pipe.warm_up(width=32, height=32)
    assert np.array_equal(pixels(pipe.generate("a paper boat", **recipe)), before)


class GatedWarmUp(WarmUpPolicy):
    """The real warm-up, held at a gate so the test can look at what happens meanwhile."""

    def __init__(self, gate: threading.Event, **kw):
        super().__init__(**kw)
        object.__setattr__(self, "gate", gate)
        object.__setattr__(self, "started", threading.Event())

    def run(self, pipe, name):
        self.started.set()
        assert self.gate.wait(60)
        return super().run(pipe, name)


@pytest.fixture
def store(tmp_path, tiny_folder, monkeypatch) -> Store:
    """The tiny model in a store of its own, the one the scheduler reads."""
    store = Store(tmp_path / "store")
    import_folder(store, "tiny", inspect_folder(tiny_folder))
    monkeypatch.setenv("OLLAMA_IMG_MODELS", str(store.root))
    return store


@contextlib.asynccontextmanager
async def gated_scheduler(**warm_up):
    """A started scheduler whose warm-up waits at `scheduler.warm_up.gate` (opened when the block ends)."""
    gate = threading.Event()
    scheduler = Scheduler(default_keepalive=60)
    scheduler.warm_up = GatedWarmUp(gate, mode="on", **warm_up)
    scheduler.start()
    try:
        yield scheduler
    finally:
        gate.set()
        await scheduler.close()


def test_a_load_only_request_is_answered_first_then_the_model_warms_up(store):
    direct = load_pipeline("tiny", store=store).generate("a paper boat", width=32, height=32, steps=2, seed=3)

    async def scenario():
        async with gated_scheduler(size=(32, 32)) as scheduler:
            gate = scheduler.warm_up.gate
            load = scheduler.submit(GenerateParams(model="tiny:latest", prompt=""), None)
            answered = await asyncio.wait_for(load.outcome(), timeout=120)
            assert answered.kind == DONE and answered.result.pngs == []
            await asyncio.wait_for(asyncio.to_thread(scheduler.warm_up.started.wait, 60), timeout=90)
            (model,) = scheduler.loaded_models()
            assert not model.warm  # answered while the warm-up is still to run
            job = scheduler.submit(
                GenerateParams(
                    model="tiny:latest", prompt="a paper boat", width=32, height=32, steps=2, seed=3
                ),
                None,
            )
            gate.set()
            outcome = await asyncio.wait_for(job.outcome(), timeout=120)
            assert outcome.kind == DONE and model.warm
            return outcome.result.pngs[0]

    png = asyncio.run(scenario())
    assert np.array_equal(pixels(Image.open(io.BytesIO(png))), pixels(direct))


def test_a_prompt_is_its_own_warm_up(store):
    """With a prompt there is nothing to gain by warming up first: the job runs straight away."""

    async def scenario():
        async with gated_scheduler() as scheduler:  # the gate stays shut: a warm-up would hang the job
            params = GenerateParams(
                model="tiny:latest", prompt="a kite", width=32, height=32, steps=1, seed=1
            )
            outcome = await asyncio.wait_for(scheduler.submit(params, None).outcome(), timeout=120)
            assert outcome.kind == DONE and not scheduler.warm_up.started.is_set()
            again = await asyncio.wait_for(
                scheduler.submit(GenerateParams(model="tiny:latest", prompt=""), None).outcome(), timeout=60
            )
            assert again.kind == DONE and not scheduler.warm_up.started.is_set()  # it has generated: warm

    asyncio.run(scenario())


def test_a_job_waiting_behind_the_load_only_request_is_the_warm_up(store):
    """A made-up warm-up image would only delay the real one queued behind the load."""

    async def scenario():
        async with gated_scheduler(size=(32, 32)) as scheduler:  # shut: a warm-up would hang the job
            load = scheduler.submit(GenerateParams(model="tiny:latest", prompt=""), None)
            params = GenerateParams(
                model="tiny:latest", prompt="a kite", width=32, height=32, steps=1, seed=1
            )
            job = scheduler.submit(params, None)  # queued while the model loads
            assert (await asyncio.wait_for(load.outcome(), timeout=120)).kind == DONE
            assert (await asyncio.wait_for(job.outcome(), timeout=120)).kind == DONE
            assert not scheduler.warm_up.started.is_set()

    asyncio.run(scenario())


@pytest.fixture
def world(tmp_path, tiny_folder):
    env = EngineEnv(tmp_path, PYTHONPATH=SRC, OLLAMA_IMG_WARMUP="64x64")
    created = env.cli("create", "tiny", "-f", str(tiny_folder))
    assert created.returncode == 0, created.stderr
    yield env
    env.close()


def test_the_engine_log_has_the_load_phases_and_the_warm_up(world):
    world.start_engine()
    with world.http() as http:
        loaded = http.post("/api/generate", json={"model": "tiny", "stream": False})
    assert loaded.status_code == 200 and loaded.json()["done_reason"] == "load"
    world.wait_for(lambda: "warmed up tiny:latest at 64x64" in world.log_text(), what="the warm-up")
    log = world.log_text()
    line = re.search(r"loaded tiny:latest \(\d+ bytes\) in ([\d.]+)s \((.*)\)", log)
    assert line, log[-2000:]
    phases = dict(re.findall(r"(\w+) ([\d.]+) s", line.group(2)))
    assert set(phases) == {"resolve", "read", "build", "eval"}
    assert sum(map(float, phases.values())) <= float(line.group(1)) + 0.02  # parts of the load, no more
    ran = world.cli(
        "run", "tiny", "a paper boat", "--size", "64x64", "--steps", "2", "--seed", "3", "-o", "b.png"
    )
    assert ran.returncode == 0, ran.stderr
    assert log.count("warmed up") == world.log_text().count("warmed up") == 1  # once per load


def test_a_bad_warm_up_setting_is_one_line(tmp_path):
    env = EngineEnv(tmp_path, PYTHONPATH=SRC, OLLAMA_IMG_WARMUP="lots")
    try:
        done = env.cli("serve", "--socket-only", timeout=60)
    finally:
        env.close()
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "Error: OLLAMA_IMG_WARMUP must be auto, 1, 0 or WIDTHxHEIGHT, got 'lots'"
    ]
