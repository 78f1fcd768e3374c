"""The memory plan's levers on the tiny model (MLX on the CPU): every plan makes the same image as the
unconstrained one, components come and go as the plan says, and a budget too small is one clear error."""

import dataclasses
import sys

import mlx.core as mx
import numpy as np
import pytest

from ollama_img import load_pipeline
from ollama_img.memory.budget import BUDGET_ENV, Budget
from ollama_img.memory.plan import (
    ENCODERS_ON_DEMAND,
    ONE_STAGE,
    RESIDENT,
    Evaluation,
    MemoryPlanError,
    holds_for,
)
from ollama_img.models.residency import module_bytes
from ollama_img.quantization import TYPES
from ollama_img.store import import_folder, inspect_folder
from ollama_img.weights import StoreSource

SIZE = dict(width=64, height=48, steps=2)


@pytest.fixture(autouse=True)
def _mlx_limits():
    """Loading sets MLX's process-wide limits to the plan: give the next test MLX's own."""
    from ollama_img.memory.device import restore_limits

    yield
    restore_limits()


@pytest.fixture(scope="module")
def pipe(tiny_folder):
    return load_pipeline(tiny_folder)


@pytest.fixture(scope="module")
def reference(pipe):
    pipe.memory_plan, planner = None, pipe.planner
    pipe.planner = None
    image = np.array(pipe.generate("a red fox", seed=3, **SIZE))
    guided = np.array(pipe.generate("a red fox", seed=3, guidance=3.0, negative_prompt="fog", **SIZE))
    pipe.planner = planner
    return image, guided


def forced(pipe, residency, **changes):
    """The pipeline's own plan for the request, with the residency and evaluations given."""
    plan = pipe.planner.plan(SIZE["width"], SIZE["height"])
    profile = pipe.planner.profile
    return dataclasses.replace(plan, residency=residency, holds=holds_for(profile, residency), **changes)


PLANS = [
    (RESIDENT, {}),
    (RESIDENT, {"denoiser": Evaluation(1), "encoder": Evaluation(1), "decoder": "blocks"}),
    (RESIDENT, {"denoiser": Evaluation(1, pipelined=False), "decoder": "layers"}),
    (RESIDENT, {"denoiser": Evaluation(None), "encoder": Evaluation(None), "decoder": "whole"}),
    (ENCODERS_ON_DEMAND, {"decoder": "layers"}),
    (ONE_STAGE, {"denoiser": Evaluation(1), "decoder": "blocks"}),
]


@pytest.mark.parametrize(("residency", "changes"), PLANS)
def test_every_plan_makes_the_unconstrained_image(pipe, reference, residency, changes):
    """Plans change when the device runs the operations and what stays loaded, never the arithmetic."""
    planner = pipe.planner
    pipe.planner, pipe.memory_plan = None, forced(pipe, residency, **changes)
    try:
        pipe._embeddings.clear()  # each plan encodes the prompts itself
        image = np.array(pipe.generate("a red fox", seed=3, **SIZE))
        guided = np.array(pipe.generate("a red fox", seed=3, guidance=3.0, negative_prompt="fog", **SIZE))
    finally:
        pipe.planner = planner
    np.testing.assert_array_equal(image, reference[0])
    np.testing.assert_array_equal(guided, reference[1])


def test_block_at_a_time_evaluates_every_transformer_block_on_its_own(pipe, monkeypatch):
    """Waiting for each block bounds what is alive to one block's outputs only if no evaluation takes in
    two: the noise refiner's blocks and the main stack's last are evaluated too, not left lazy to run in
    one graph with what follows (on an H100 that merged chunk held three blocks, 2 GB over the plan)."""
    from ollama_img.models import evaluation

    calls = []

    class Recording:
        def __getattr__(self, name):
            return getattr(mx, name)

        def eval(self, *arrays):
            calls.append(sys._getframe(2).f_code.co_name)  # Chunks.after's caller
            mx.eval(*arrays)

    monkeypatch.setattr(evaluation, "mx", Recording())
    plan = forced(pipe, RESIDENT, denoiser=Evaluation(1, pipelined=False), encoder=Evaluation(None))
    planner = pipe.planner
    pipe.planner, pipe.memory_plan = None, plan
    try:
        pipe.generate("a red fox", seed=3, **SIZE)
    finally:
        pipe.planner = planner
    config = pipe.transformer.config
    blocks = calls.count("run_blocks")
    assert blocks == SIZE["steps"] * (config.n_refiner_layers + config.n_layers), calls


def test_text_encoder_on_demand(pipe):
    planner = pipe.planner
    pipe.planner, pipe.memory_plan = None, forced(pipe, ENCODERS_ON_DEMAND)
    try:
        pipe._embeddings.clear()
        everything = pipe.resident_bytes if pipe.parts.is_loaded("text_encoder") else None
        pipe.generate("an owl", seed=1, **SIZE)
        assert not pipe.parts.is_loaded("text_encoder")  # released after encoding
        held = pipe.resident_bytes
        assert everything is None or held < everything
        loads = pipe.parts.loads
        pipe.generate("an owl", seed=2, **SIZE)  # the same prompt: its embedding is cached
        assert pipe.parts.loads == loads
        pipe.generate("a heron", seed=2, **SIZE)  # a new prompt loads the encoder again
        assert pipe.parts.loads == loads + 1 and not pipe.parts.is_loaded("text_encoder")
    finally:
        pipe.planner = planner
    pipe.memory_plan = None
    pipe.generate("back to resident", seed=1, **SIZE)
    assert pipe.parts.is_loaded("text_encoder")  # no plan: whatever is used stays


def test_a_released_component_leaves_mlx_at_once(pipe):
    """Entering a phase that does not hold the text encoder gives its buffers back to the device: they
    are not kept in MLX's buffer cache, where the next phase's differently sized buffers would not reuse
    them (the 24 GB plan held the encoder's 8 GB there after its images on an H200)."""
    planner = pipe.planner
    pipe.planner, pipe.memory_plan = None, forced(pipe, ENCODERS_ON_DEMAND)
    previous = mx.set_cache_limit(1 << 30)
    try:
        pipe._embeddings.clear()
        pipe.encode_prompt("a badger")
        encoder_bytes = module_bytes(pipe.parts.get("text_encoder"))
        active = mx.get_active_memory()
        pipe._enter("denoise")
        assert not pipe.parts.is_loaded("text_encoder")
        assert mx.get_cache_memory() == 0
        assert active - mx.get_active_memory() >= encoder_bytes
    finally:
        mx.set_cache_limit(previous)
        pipe.planner = planner
        pipe.memory_plan = None


def test_giving_back_trims_the_cuda_pool_only_on_cuda(monkeypatch):
    """On CUDA the driver's pool keeps what MLX frees reserved to the process: giving back trims it. The
    driver is not on CI, so the trim is recorded, not made; elsewhere there is no pool to trim."""
    from ollama_img.memory import cuda_pool, device

    trims = []
    monkeypatch.setattr(cuda_pool, "trim", lambda: trims.append(1) or 123)
    assert device.give_back() == 0 and trims == []  # the CPU back end
    monkeypatch.setattr(device, "platform_backend", lambda: "cuda")
    assert device.give_back() == 123 and trims == [1]


def test_one_stage_at_a_time_releases_the_transformer_while_encoding(pipe):
    planner = pipe.planner
    pipe.planner, pipe.memory_plan = None, forced(pipe, ONE_STAGE)
    seen = []
    original = pipe.parts.keep_only

    def spy(names):
        original(names)
        seen.append((pipe.parts.is_loaded("text_encoder"), pipe.parts.is_loaded("transformer")))

    pipe.parts.keep_only = spy
    try:
        pipe._embeddings.clear()
        pipe.generate("a lighthouse", seed=1, **SIZE)
    finally:
        pipe.parts.keep_only = original
        pipe.planner = planner
    # entering encode: the transformer is gone; entering denoise: the text encoder is gone
    assert seen[0][1] is False and seen[1][0] is False
    assert pipe.parts.is_loaded("transformer") and not pipe.parts.is_loaded("text_encoder")


def test_the_planner_replans_each_request(pipe):
    """A budget just below what the tiny model needs with everything resident: the pipeline's own plan,
    made for the request, releases the text encoder."""
    planner = pipe.planner
    resident_only = dataclasses.replace(planner.profile, residencies=(RESIDENT,))
    with pytest.raises(MemoryPlanError) as info:
        dataclasses.replace(planner, profile=resident_only, budget=Budget(1, "test")).plan(
            64, 48, prompts=("a fox",)
        )
    try:
        pipe.planner = planner.within(Budget(info.value.need - 1, "test"))
        pipe.generate("a fox", seed=1, **SIZE)
        assert pipe.memory_plan.residency in (ENCODERS_ON_DEMAND, ONE_STAGE)
        assert pipe.memory_plan.peak < info.value.need
        assert not pipe.parts.is_loaded("text_encoder")
        assert mx.get_cache_memory() <= pipe.memory_plan.cache_limit
    finally:
        pipe.planner = planner


def test_a_budget_too_small_is_one_clear_error_and_the_pipeline_goes_on(pipe):
    planner = pipe.planner
    try:
        pipe.planner = planner.within(Budget(10**6, BUDGET_ENV))
        with pytest.raises(MemoryPlanError) as info:
            pipe.generate("too big", seed=1, **SIZE)
        assert "needs about" in str(info.value) and "64x48" in str(info.value) and "1 MB" in str(info.value)
    finally:
        pipe.planner = planner
    assert pipe.generate("fits again", seed=1, **SIZE).size == (64, 48)


def test_load_pipeline_refuses_a_budget_the_weights_exceed(tiny_folder, monkeypatch):
    monkeypatch.setenv(BUDGET_ENV, "1MB")
    with pytest.raises(MemoryPlanError, match="needs about"):
        load_pipeline(tiny_folder)


def test_quantized_weights_stay_packed_under_every_plan(tiny_folder, store):
    import_folder(store, "tiny:fp8", inspect_folder(tiny_folder), quantize=TYPES["fp8"])
    pipe = load_pipeline("tiny:fp8", store=store)
    plan = pipe.memory_plan
    assert plan.component("transformer").quant_type == "fp8"
    assert plan.component("transformer").compute != "dequantize-at-load"
    stored = StoreSource(store, "tiny:fp8").stored()
    weights = sum(s.weights for s in stored.values())
    assert pipe.resident_bytes <= weights * 1.5  # packed (the CPU holds non-matmul tensors in float32)
    reference = np.array(pipe.generate("a red fox", seed=3, **SIZE))
    planner = pipe.planner
    pipe.planner, pipe.memory_plan = None, forced(pipe, ONE_STAGE, denoiser=Evaluation(1), decoder="layers")
    pipe._embeddings.clear()
    try:
        np.testing.assert_array_equal(np.array(pipe.generate("a red fox", seed=3, **SIZE)), reference)
    finally:
        pipe.planner = planner


def test_unloading_frees_mlx_cache(tiny_folder):
    """The scheduler's release drops the pipeline and empties MLX's buffer cache."""
    from ollama_img.engine.scheduler import LoadedModel, _release

    pipe = load_pipeline(tiny_folder)
    pipe.generate("cache me", seed=1, **SIZE)
    mx.set_cache_limit(1 << 30)
    pipe.generate("cache me too", seed=2, **SIZE)
    assert mx.get_cache_memory() > 0
    model = LoadedModel(name="tiny", digest=None, pipe=pipe, size=pipe.resident_bytes)
    del pipe
    _release(model)
    assert model.pipe is None
    assert mx.get_cache_memory() == 0


def test_with_no_budget_mlx_is_held_to_the_plans_peak(tiny_folder, monkeypatch):
    """Without a user budget the plan's budget is all the free memory; MLX's limit is the plan's peak."""
    monkeypatch.delenv(BUDGET_ENV, raising=False)
    default = mx.get_memory_limit()
    pipe = load_pipeline(tiny_folder)
    plan = pipe.planner.for_load()
    assert plan.peak < plan.budget.bytes  # the tiny model leaves most of the RAM free
    assert mx.get_memory_limit() == plan.peak - plan.overhead < default


def test_with_a_user_budget_mlx_is_held_to_the_plans_peak_within_it(tiny_folder, monkeypatch):
    monkeypatch.setenv(BUDGET_ENV, "20MB")
    pipe = load_pipeline(tiny_folder)
    plan = pipe.planner.for_load()
    assert plan.budget.bytes == 20 * 10**6 and plan.peak <= plan.budget.bytes
    assert mx.get_memory_limit() == plan.peak - plan.overhead


def test_an_idle_engine_gives_its_freed_memory_back(tiny_folder, store, monkeypatch):
    """The scheduler, after a job and a few seconds with nothing to do, empties MLX's buffer cache (on
    CUDA it also trims the driver's pool): the model's weights stay, the peak's buffers go."""
    import asyncio
    import time

    from ollama_img.engine.jobs import DONE
    from ollama_img.engine.params import GenerateParams
    from ollama_img.engine.scheduler import Scheduler

    import_folder(store, "tiny", inspect_folder(tiny_folder))
    monkeypatch.setenv("OLLAMA_IMG_MODELS", str(store.root))

    async def scenario():
        scheduler = Scheduler(default_keepalive=60)
        scheduler.idle_give_back_s = 1.5
        scheduler.start()
        try:
            params = GenerateParams(model="tiny:latest", prompt="a kite", seed=1, **SIZE)
            outcome = await asyncio.wait_for(scheduler.submit(params, None).outcome(), timeout=120)
            assert outcome.kind == DONE
            cached_after_the_job = mx.get_cache_memory()
            deadline = time.monotonic() + 30
            while mx.get_cache_memory() and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            (model,) = scheduler.loaded_models()
            return cached_after_the_job, mx.get_cache_memory(), model.pipe is not None
        finally:
            await scheduler.close()

    cached_after_the_job, cached_later, still_loaded = asyncio.run(scenario())
    assert cached_after_the_job > 0
    assert cached_later == 0
    assert still_loaded
