"""Priming: the parts of a first image compiled in helper processes before it (`ollama_img.priming`).

On the CPU nothing needs compiling, so `auto` never primes there; `OLLAMA_IMG_PRIME=1` runs the same
helpers on the CPU back end, which is how these tests exercise the real path: helper processes, the
skeleton of the tiny model, each task, and the load that waits for them.
"""

import json
import logging

import numpy as np
import pytest

from ollama_img import load_pipeline, priming
from ollama_img.errors import UserError
from ollama_img.memory.budget import Budget
from ollama_img.memory.plan import DEVICES, Planner
from ollama_img.models.autoencoder_kl import AutoencoderKL
from ollama_img.models.configs import AutoencoderKLConfig
from ollama_img.models.loading import ComponentLoader
from ollama_img.models.zimage import ARCHITECTURE
from ollama_img.models.zimage import priming as zimage_priming
from ollama_img.models.zimage.config import ZImageConfig
from ollama_img.weights import FolderSource
from tests.fixtures.full_size import FullSizeSource, full_profile

GB = 10**9
SIZE = dict(width=64, height=48, steps=2)


def full_planner(quant=None, budget_gb=140):
    return Planner(full_profile(quant), DEVICES["cuda"], Budget(int(budget_gb * GB), "test"))


# -- what a first image compiles -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("quant", "budget", "modes"), [(None, 140, {"layers", "whole"}), ("int4", 8, {"layers", "blocks"})]
)
def test_tasks_cover_each_kind_of_part_once(quant, budget, modes):
    """At 1024x1024 and 512x512 the plans decode by layers and whole (or by blocks in 8 GB): one task per
    kind of decoder piece in each mode, one step (CUDA runs the stack eagerly however the plan chunks
    it), the text encoder's layers and its embedding apart (two compiles that would otherwise queue)."""
    source = FullSizeSource(quant)
    tasks = zimage_priming.tasks(source, full_planner(quant, budget))
    kinds = [t["kind"] for t in tasks]
    assert kinds[:2] == ["text-layers", "step"] and kinds.count("step") == 1 and "text-embed" in kinds
    vae = AutoencoderKL(AutoencoderKLConfig.from_dict(source.read_json("vae/config.json")))
    decodes = [t for t in tasks if t["kind"] == "decode"]
    assert {t["mode"] for t in decodes} == modes
    for mode in modes - {"whole"}:
        pieces = zimage_priming._piece_inputs(vae, mode)
        chosen = [pieces[t["piece"]][0] for t in decodes if t["mode"] == mode]
        assert len(chosen) == len(set(chosen)) == len({what for what, _ in pieces})  # each kind, once
    assert len(json.dumps(tasks)) < 2000  # they travel on a helper's command line


def test_piece_shapes_scale_from_a_one_pixel_trace():
    config = AutoencoderKLConfig.from_dict(FullSizeSource().read_json("vae/config.json"))
    vae = AutoencoderKL(config)
    shapes = [shape for _, shape in zimage_priming._piece_inputs(vae, "blocks", side=64)]
    assert shapes[0] == (1, 8, 8, config.latent_channels)  # the latents, channels last
    assert shapes[-1] == (1, 64, 64, config.block_out_channels[0])  # the tail's input: the image's size


def test_skeleton_keeps_one_block_per_stack_with_the_real_configs(tiny_folder):
    source = FolderSource(tiny_folder)
    skeleton = zimage_priming.SkeletonSource(source)
    real, cut = (s.read_json("transformer/config.json") for s in (source, skeleton))
    assert cut["n_layers"] == 1 and cut["n_refiner_layers"] == 1
    assert {k: v for k, v in cut.items() if not k.startswith("n_")} == {
        k: v for k, v in real.items() if not k.startswith("n_")
    }
    names = set(skeleton.weights("transformer").tensors)
    assert any(n.startswith("layers.0.") for n in names) and not any(n.startswith("layers.1.") for n in names)
    assert any(n.startswith("context_refiner.0.") for n in names)
    assert not any(n.startswith(("noise_refiner.1.", "context_refiner.1.")) for n in names)
    vocab = source.read_json("text_encoder/config.json")["vocab_size"]
    tensors = skeleton.weights("text_encoder").tensors
    embedding = next(v for k, v in tensors.items() if k.endswith("embed_tokens.weight"))
    assert embedding.shape[0] == min(vocab, 1024)


def test_skeleton_components_load_through_the_real_loader(tiny_folder, monkeypatch):
    from ollama_img.models.configs import Qwen3Config
    from ollama_img.models.qwen3 import Qwen3TextEncoder
    from ollama_img.models.zimage.config import TEXT_LAYER
    from ollama_img.models.zimage.transformer import ZImageTransformer

    monkeypatch.setitem(zimage_priming.SKELETON_CONFIG["text_encoder/config.json"], "vocab_size", 100)
    loader = ComponentLoader(zimage_priming.SkeletonSource(FolderSource(tiny_folder)))
    config = loader.config(Qwen3Config.from_dict, "text_encoder/config.json")
    encoder = loader.load("text_encoder", Qwen3TextEncoder(config, (TEXT_LAYER,)))
    assert len(encoder.layers) == 1 and encoder.embed_tokens.weight.shape[0] == 100  # the table cut too
    config = loader.config(ZImageConfig.from_dict, "transformer/config.json")
    transformer = loader.load("transformer", ZImageTransformer(config), fuse=ZImageTransformer.fuse_units)
    assert len(transformer.layers) == len(transformer.noise_refiner) == len(transformer.context_refiner) == 1


# -- how many helpers, and when --------------------------------------------------------------------


def test_grouping_runs_beside_the_load_only_when_every_helper_fits():
    tasks = [{"kind": "decode", "piece": i} for i in range(6)]
    need = lambda group: 1 * GB  # noqa: E731 - one GB per helper, whatever it runs

    groups, before = priming._grouping(tasks, 4, need, free=30 * GB, peak=20 * GB)
    assert not before and len(groups) == 4 and sorted(t["piece"] for g in groups for t in g) == list(range(6))
    groups, before = priming._grouping(tasks, 4, need, free=22 * GB, peak=20 * GB)  # 2 would fit beside
    assert before and len(groups) == 4
    groups, before = priming._grouping(tasks, 4, need, free=int(2.5 * GB), peak=20 * GB)
    assert before and len(groups) == 2
    assert priming._grouping(tasks, 4, need, free=GB // 2, peak=20 * GB) is None
    assert (
        len(priming._grouping(tasks, 64, need, free=100 * GB, peak=0)[0]) == 6
    )  # no more helpers than tasks


def test_helper_memory_counts_the_device_overhead_and_the_largest_skeleton():
    planner = full_planner()
    plan = planner.for_load()
    need = priming._helper_bytes(zimage_priming, planner, plan)
    vae_only = need([{"kind": "decode", "mode": "whole"}])
    with_step = need([{"kind": "decode", "mode": "whole"}, {"kind": "step", "chunk": 1}])
    assert plan.overhead < vae_only < with_step < 3 * GB  # one transformer block per stack: about 1.2 GB


def test_policy_reads_the_variable(monkeypatch):
    for raw, mode in (("", "auto"), ("auto", "auto"), ("1", "on"), ("ON", "on"), ("0", "off")):
        monkeypatch.setenv(priming.PRIME_ENV, raw)
        assert priming.policy() == mode
    monkeypatch.setenv(priming.PRIME_ENV, "sometimes")
    with pytest.raises(UserError, match="OLLAMA_IMG_PRIME must be auto, 1 or 0"):
        priming.policy()


def test_auto_primes_only_on_cuda_and_only_once(tiny_folder, tmp_path, monkeypatch):
    from ollama_img import backend, caches

    source = FolderSource(tiny_folder)
    planner = Planner(ARCHITECTURE.memory_of(source), DEVICES["cuda"], Budget(100 * GB, "test"))
    plan = planner.for_load()
    monkeypatch.delenv(priming.PRIME_ENV, raising=False)
    assert priming.plan_job(ARCHITECTURE, source, planner, plan, free=100 * GB) is None  # the CPU
    monkeypatch.setattr(backend, "platform_backend", lambda: "cuda")
    monkeypatch.setattr(caches, "configure", lambda: caches.CompileCaches({caches.MLX_ENV: str(tmp_path)}))
    job = priming.plan_job(ARCHITECTURE, source, planner, plan, free=100 * GB)
    assert job is not None and not job.before_load and job.marker.parent == tmp_path / priming.MARKERS
    job.marker.parent.mkdir()
    job.marker.write_text("{}")
    assert priming.plan_job(ARCHITECTURE, source, planner, plan, free=100 * GB) is None  # done already
    monkeypatch.setenv(priming.PRIME_ENV, "1")
    assert priming.plan_job(ARCHITECTURE, source, planner, plan, free=100 * GB) is not None
    monkeypatch.setenv(priming.PRIME_ENV, "0")
    assert priming.plan_job(ARCHITECTURE, source, planner, plan, free=100 * GB) is None


# -- the real helpers, on the CPU ------------------------------------------------------------------


@pytest.fixture
def _mlx_limits():
    from ollama_img.memory.device import restore_limits

    yield
    restore_limits()


def test_primed_load_makes_the_same_image(tiny_folder, monkeypatch, caplog, _mlx_limits):
    from ollama_img.phases import recording

    monkeypatch.setenv(priming.PRIME_ENV, "0")
    reference = np.array(load_pipeline(tiny_folder).generate("a lighthouse", seed=5, **SIZE))
    monkeypatch.setenv(priming.PRIME_ENV, "1")
    with caplog.at_level(logging.INFO, logger="ollama_img.engine"), recording() as timer:
        pipe = load_pipeline(tiny_folder)
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("compiling z-image's GPU kernels once") for m in messages)
    assert any(m.startswith("compiled z-image's GPU kernels in") for m in messages), messages
    assert timer.phases.get("prime", 0) > 0
    np.testing.assert_array_equal(np.array(pipe.generate("a lighthouse", seed=5, **SIZE)), reference)


def test_a_failing_helper_costs_only_the_head_start(tiny_folder, tmp_path, monkeypatch, caplog, _mlx_limits):
    """A helper whose task fails exits non-zero: the load goes on, says so in the log, marks nothing."""
    source = FolderSource(tiny_folder)
    planner = Planner(ARCHITECTURE.memory_of(source), DEVICES["cpu"], Budget(100 * GB, "test"))
    plan = planner.for_load()
    monkeypatch.setenv(priming.PRIME_ENV, "1")
    job = priming.plan_job(ARCHITECTURE, source, planner, plan, free=100 * GB)
    job.groups = [[{"kind": "no-such-part"}], job.groups[0]]
    job.marker = tmp_path / "marker.json"
    with caplog.at_level(logging.WARNING, logger="ollama_img.engine"):
        assert priming.start(job).finish() is False
    warning = next(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert "1 of 2 helpers failed" in warning and "unknown priming task" in warning
    assert not job.marker.exists()
    job.groups = job.groups[1:]
    assert priming.start(job).finish() is True
    assert json.loads(job.marker.read_text())["family"] == "z-image"
    job.marker = tmp_path / "marker.json" / "cannot-be-made"  # under a file: the marker cannot be written
    with caplog.at_level(logging.WARNING, logger="ollama_img.engine"):
        assert priming.start(job).finish() is True  # the kernels are compiled all the same
    assert "cannot write" in caplog.records[-1].getMessage()


def test_stopping_helpers_leaves_no_process_and_no_log(tiny_folder, monkeypatch):
    source = FolderSource(tiny_folder)
    planner = Planner(ARCHITECTURE.memory_of(source), DEVICES["cpu"], Budget(100 * GB, "test"))
    monkeypatch.setenv(priming.PRIME_ENV, "1")
    job = priming.plan_job(ARCHITECTURE, source, planner, planner.for_load(), free=100 * GB)
    helpers = priming.start(job)
    helpers.stop()
    assert all(p.poll() is not None for p in helpers.processes)
    assert not any(path.exists() for path in helpers.logs)


def test_a_quantized_store_model_primes_from_the_store(tiny_folder, store, monkeypatch, caplog, _mlx_limits):
    """The helpers open the store model by name and load its packed weights as the main process does."""
    from ollama_img.quantization import TYPES
    from ollama_img.store import import_folder, inspect_folder

    import_folder(store, "tiny:int4", inspect_folder(tiny_folder), quantize=TYPES["int4"])
    monkeypatch.setenv(priming.PRIME_ENV, "0")
    reference = np.array(load_pipeline("tiny:int4", store=store).generate("a kite", seed=2, **SIZE))
    monkeypatch.setenv(priming.PRIME_ENV, "1")
    with caplog.at_level(logging.INFO, logger="ollama_img.engine"):
        pipe = load_pipeline("tiny:int4", store=store)
    assert any(r.getMessage().startswith("compiled z-image's GPU kernels in") for r in caplog.records)
    np.testing.assert_array_equal(np.array(pipe.generate("a kite", seed=2, **SIZE)), reference)


def test_the_engine_primes_a_load_and_logs_it(tmp_path, tiny_folder):
    """Through the engine: its load starts the helpers, waits for them, and logs both; the load's phases
    gain `prime`; a bad OLLAMA_IMG_PRIME stops a `run` in one line."""
    import re
    from pathlib import Path

    from tests.fixtures.engine_env import EngineEnv

    src = str(Path(__file__).resolve().parent.parent / "src")
    world = EngineEnv(tmp_path, PYTHONPATH=src, OLLAMA_IMG_PRIME="1")
    try:
        assert world.cli("create", "tiny", "-f", str(tiny_folder)).returncode == 0
        ran = world.cli("run", "tiny", "a kite", "--size", "64x64", "--steps", "2", "-o", "k.png")
        assert ran.returncode == 0, ran.stderr
        log = world.log_text()
        assert "compiling z-image's GPU kernels once" in log and "compiled z-image's GPU kernels in" in log
        line = re.search(r"loaded tiny:latest \(\d+ bytes\) in [\d.]+s \((.*)\)", log)
        assert line and "prime" in dict(re.findall(r"(\w+) ([\d.]+) s", line.group(1))), log[-2000:]
        world.shutdown()
        world.env[priming.PRIME_ENV] = "sometimes"
        refused = world.cli("run", "tiny", "a kite", "--size", "64x64", "--steps", "2", "-o", "k.png")
        assert refused.returncode == 1 and world.engine_pid() is None
        assert refused.stderr.strip().splitlines() == [
            "Error: OLLAMA_IMG_PRIME must be auto, 1 or 0, got 'sometimes'"
        ]
    finally:
        world.close()


# -- helpers that do not end well ------------------------------------------------------------------


def sleeping_helpers(tmp_path, count=1):
    """Helpers that never finish by themselves, under a real Job."""
    import subprocess

    job = priming.Job("z-image", {}, [[{"kind": "decode"}]] * count, False, tmp_path / "marker.json")
    logs = []
    for i in range(count):
        logs.append(tmp_path / f"helper-{i}.log")
        logs[-1].write_text("still compiling\n")
    processes = [subprocess.Popen(["sleep", "60"]) for _ in range(count)]
    return priming.Helpers(job, processes, logs)


def test_a_helper_past_its_time_is_killed_and_its_last_cache_writes_forgotten(tmp_path, monkeypatch, caplog):
    import os
    import time

    from ollama_img import caches

    mlx_dir = tmp_path / "mlx"
    (mlx_dir / priming.MARKERS).mkdir(parents=True)
    old, fresh, marker = mlx_dir / "old.ptx", mlx_dir / "fresh.ptx", mlx_dir / priming.MARKERS / "m.json"
    for path in (old, fresh, marker):
        path.write_text("x")
    os.utime(old, (time.time() - 60, time.time() - 60))
    monkeypatch.setattr(caches, "configure", lambda: caches.CompileCaches({caches.MLX_ENV: str(mlx_dir)}))
    helpers = sleeping_helpers(tmp_path)
    with caplog.at_level(logging.WARNING, logger="ollama_img.engine"):
        assert helpers.finish(timeout=0.5) is False
    assert helpers.processes[0].poll() is not None and not helpers.logs[0].exists()
    assert "timed out: still compiling" in caplog.records[-1].getMessage()
    assert old.exists() and marker.exists() and not fresh.exists()  # possibly cut short: compiled again
    assert not helpers.job.marker.exists()


def test_an_interrupted_wait_leaves_no_helper_behind(tmp_path):
    import _thread
    import threading

    helpers = sleeping_helpers(tmp_path, count=2)
    threading.Timer(0.3, _thread.interrupt_main).start()
    with pytest.raises(KeyboardInterrupt):
        helpers.finish(timeout=30)
    assert all(p.poll() is not None for p in helpers.processes)
    assert not any(log.exists() for log in helpers.logs)


def test_a_helper_that_cannot_start_stops_the_others(tiny_folder, monkeypatch):
    import subprocess

    source = FolderSource(tiny_folder)
    planner = Planner(ARCHITECTURE.memory_of(source), DEVICES["cpu"], Budget(100 * GB, "test"))
    monkeypatch.setenv(priming.PRIME_ENV, "1")
    job = priming.plan_job(ARCHITECTURE, source, planner, planner.for_load(), free=100 * GB)
    job.groups = [job.groups[0], job.groups[0]]
    started = []
    real_popen = subprocess.Popen

    def popen(*args, **kwargs):
        if started:
            raise OSError(24, "Too many open files")
        started.append(real_popen(["sleep", "60"]))
        return started[-1]

    monkeypatch.setattr(subprocess, "Popen", popen)
    with pytest.raises(OSError, match="Too many open files"):
        priming.start(job)
    assert started[0].poll() is not None  # killed, not orphaned


def test_the_helpers_stay_within_the_budget(tiny_folder, monkeypatch):
    """However much the device has free, the helpers take no more than the engine's budget leaves."""
    source = FolderSource(tiny_folder)
    monkeypatch.setenv(priming.PRIME_ENV, "1")
    roomy = Planner(ARCHITECTURE.memory_of(source), DEVICES["cpu"], Budget(100 * GB, "test"))
    job = priming.plan_job(ARCHITECTURE, source, roomy, roomy.for_load(), free=100 * GB)
    assert not job.before_load
    tight = roomy.within(Budget(priming.WORKING_BYTES * 3 // 2, "test"))
    job = priming.plan_job(ARCHITECTURE, source, tight, tight.for_load(), free=100 * GB)
    assert job.before_load and len(job.groups) == 1  # one helper's working set fits, two do not


def test_the_marker_tells_checkpoints_apart(tiny_folder, tiny_folder_f32, store):
    """A float32 checkpoint compiles float32 kernels: it primes under its own marker."""
    from ollama_img.store import import_folder, inspect_folder
    from ollama_img.weights import StoreSource

    bf16, f32 = (priming.stored_dtypes(FolderSource(f)) for f in (tiny_folder, tiny_folder_f32))
    assert bf16 != f32 and "F32" in f32
    import_folder(store, "tiny", inspect_folder(tiny_folder))
    assert priming.stored_dtypes(StoreSource(store, "tiny")) == bf16


ORPHAN = """
import json, os, sys
from ollama_img import priming
from ollama_img.memory.budget import Budget
from ollama_img.memory.plan import DEVICES, Planner
from ollama_img.models.zimage import ARCHITECTURE
from ollama_img.weights import FolderSource
source = FolderSource(sys.argv[1])
planner = Planner(ARCHITECTURE.memory_of(source), DEVICES["cpu"], Budget(100 * 10**9, "test"))
job = priming.plan_job(ARCHITECTURE, source, planner, planner.for_load(), free=100 * 10**9)
job.groups = [[{"kind": "no-such-part"}]]
helpers = priming.start(job)
print(json.dumps([helpers.processes[0].pid, str(helpers.logs[0])]), flush=True)
os._exit(0)  # the engine dies without stopping its helpers
"""


def test_a_helper_whose_engine_died_runs_no_more_tasks(tiny_folder, monkeypatch):
    """The helper outlives its engine only as long as the task it is in: here, none had begun, so the
    failing task never runs (its traceback would be in the helper's log)."""
    import os
    import subprocess
    import sys
    import time
    from pathlib import Path

    monkeypatch.setenv(priming.PRIME_ENV, "1")
    done = subprocess.run(
        [sys.executable, "-c", ORPHAN, str(tiny_folder)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    pid, log = json.loads(done.stdout)
    deadline = time.monotonic() + 60
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        assert not Path(f"/proc/{pid}").exists(), "the orphaned helper is still running"
        assert "unknown priming task" not in Path(log).read_text()
    finally:
        Path(log).unlink(missing_ok=True)
        if Path(f"/proc/{pid}").exists():
            os.kill(pid, 9)
