"""One generation at a time on the device, first come first served; models stay loaded for their keep-alive.

All MLX work (loading, generating, freeing) runs in ONE worker thread: MLX calls block, and arrays are
best created and used on the same thread. The event loop only keeps the books: the queue, which models
are loaded and until when, what they hold and under which memory plan (`engine.memory`), and the events
each job sends to its client. A finished job's PNGs are encoded on other threads while the next job
already runs on the device.

A model is loaded once whatever LoRA adapters its requests ask for: the pipeline swaps them in for each
image (side paths beside its weights, a few MB; `models.lora_layers`), so another adapter set never
loads a second copy of the model, and what the adapters hold counts in the model's size once applied.
"""

import asyncio
import contextlib
import gc
import logging
import math
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from ollama_img.engine import warmup
from ollama_img.engine.jobs import (
    CANCELLED,
    DONE,
    FAILED,
    LOADING,
    QUEUED,
    STEP,
    Event,
    Job,
    JobCancelled,
    Result,
    Timings,
)
from ollama_img.engine.limits import check_pixels
from ollama_img.engine.memory import Ask, left_for, planner_for
from ollama_img.engine.params import GenerateParams
from ollama_img.errors import UserError
from ollama_img.memory.budget import Budget
from ollama_img.memory.plan import MemoryPlan, MemoryPlanError, Planner
from ollama_img.models.interface import Capabilities, ImagePipeline
from ollama_img.options import INPUTS, OPTIONS, api_name, check_sizes, check_supported, image_keywords
from ollama_img.png_meta import Recipe, encode_png

log = logging.getLogger("ollama_img.engine")
STOP_WAIT = 60.0  # seconds `stop` waits for an idle model's memory to be freed before answering anyway
# Seconds with nothing to do after a job before the engine gives its freed memory back to the device
# (MLX's buffer cache, and on CUDA the driver pool's empty chunks): back-to-back images keep their
# buffers; an engine left waiting for the next prompt holds its models' weights, not their peak.
IDLE_GIVE_BACK_S = 2.0


@dataclass
class LoadedModel:
    """A pipeline held in memory, and until when it stays if nobody uses it."""

    name: str
    digest: str | None
    pipe: ImagePipeline | None  # None once unloaded
    size: int  # bytes of weights it holds now
    planner: Planner | None = None
    plan: MemoryPlan | None = None  # the plan of its last load or request
    expires_at: float = math.inf  # time.monotonic() deadline; inf = forever
    last_used: float = field(default_factory=time.monotonic)
    busy: bool = False
    stop_requested: bool = False  # `stop` came while a job ran: unload when it ends
    warm: bool = False  # has generated or warmed up since it was loaded
    unloaded: asyncio.Event = field(default_factory=asyncio.Event)

    def keep_for(self, seconds: float):
        self.last_used = time.monotonic()
        self.expires_at = self.last_used + seconds

    def seconds_left(self) -> float:
        return self.expires_at - time.monotonic()


def _release(model: LoadedModel, last: bool = False):
    """Drop the model's pipeline (its last reference) on the worker thread and give its memory back; the
    `last` model gone, MLX's own limits come back too."""
    model.pipe = None
    gc.collect()
    try:
        from ollama_img.memory.device import give_back, restore_limits

        if last:
            restore_limits()
        else:
            give_back()
    except ImportError:  # pragma: no cover - the engine cannot load a model without MLX anyway
        pass


def _retire_worker_thread():
    """The worker's last call: drop what MLX keeps per thread (its streams, and compiled graphs that hold
    Python functions: mlx.nn's activations are compiled). Left to the thread's exit, they are destroyed
    after Python has already let go of the thread; if the interpreter is finalizing by then, destroying
    them needs the GIL it can no longer give, and the process aborts ("terminate called without an active
    exception", exit 134 after SIGTERM during a job)."""
    try:
        import mlx.core as mx
    except ImportError:  # pragma: no cover - no model was ever loaded without MLX
        return
    mx.synchronize()
    mx.clear_streams()


class Scheduler:
    """The queue, the loaded models, and the single device worker."""

    def __init__(self, *, default_keepalive: float, max_loaded: int = 1, gpu_memory: Budget | None = None):
        self.default_keepalive = default_keepalive
        self.max_loaded = max_loaded
        self.gpu_memory = gpu_memory  # the user's budget (`serve --gpu-memory`); None: the environment's
        self._device = None  # memory.plan.DeviceKind, asked of MLX on the worker
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mlx-worker")
        self._queue: deque[Job] = deque()
        self._running: Job | None = None
        self._finishing: set[asyncio.Task] = set()  # jobs off the device whose PNGs are being encoded
        self._loaded: dict[str, LoadedModel] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closing = False
        self.warm_up = warmup.WarmUpPolicy.from_env()
        self.idle_give_back_s = IDLE_GIVE_BACK_S
        self._give_back_at: float | None = None  # when an idle engine gives its freed memory back

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self):
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.create_task(self._run_forever(), name="scheduler")

    async def drain(self, timeout: float) -> bool:
        """Take no more jobs, cancel the queued ones and the running one (at its next step), and wait up
        to `timeout` seconds for the device worker to be free (and finished jobs to be answered). False if
        the worker is still busy."""
        self._closing = True
        for job in list(self._queue):
            self.cancel(job)
        if self._running is not None:
            self._running.cancel()
        deadline = time.monotonic() + timeout
        while (self._running is not None or self._finishing) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)  # a job already off the device still gets its PNGs encoded
        return self._running is None

    async def close(self):
        """Cancel everything queued or running and free the models (at the next step boundary)."""
        self._closing = True
        for job in list(self._queue):
            self.cancel(job)
        if self._running is not None:
            self._running.cancel()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        finishing = list(self._finishing)
        for task in finishing:
            task.cancel()
        await asyncio.gather(*finishing, return_exceptions=True)
        models = list(self._loaded.values())
        self._loaded.clear()
        for model in models:
            self._worker.submit(_release, model)
        self._worker.submit(_retire_worker_thread)
        # Wait for the worker: a thread still inside MLX when the interpreter exits aborts the process.
        await asyncio.get_running_loop().run_in_executor(None, self._worker.shutdown)

    # -- what the HTTP side asks -----------------------------------------------------------------

    @property
    def idle(self) -> bool:
        """Nothing loaded, queued, running or being encoded: the engine may exit."""
        return not self._loaded and not self._queue and self._running is None and not self._finishing

    def loaded_models(self) -> list[LoadedModel]:
        return sorted(self._loaded.values(), key=lambda m: m.name)

    def check(self, params: GenerateParams, capabilities: Capabilities | None, name=api_name):
        """Reject a request the model cannot do before it waits in the queue: against the loaded
        pipeline, else against the capabilities its record lists (None: checked once it is loaded).
        An option the model lacks is named by `name`, as the route spells it."""
        model = self._loaded.get(params.model)
        if model is not None:
            self._validate(model.pipe, params, name)
        elif capabilities is not None:
            check_supported(params.model, params.asked(), capabilities, name)
            check_sizes(params.asked(), capabilities)

    def submit(
        self, params: GenerateParams, digest: str | None, adapters_held: tuple[str, int] | None = None
    ) -> Job:
        """Queue a job; its events say where it stands. An empty prompt only loads the model.
        `adapters_held`: what the request's own adapters hold beside the weights (`catalog.check_adapters`),
        planned with the job."""
        job = Job(params=params, digest=digest, loop=asyncio.get_running_loop(), adapters_held=adapters_held)
        if self._closing:  # shutting down: the job ends at once, cancelled
            job.cancel()
            job.emit(Event(CANCELLED))
            return job
        busy = self._running is not None or bool(self._queue)
        self._queue.append(job)
        if busy:
            job.emit(Event(QUEUED, position=len(self._queue)))
        self._wake.set()
        return job

    def cancel(self, job: Job):
        """The client went away: drop the job if it waits, or stop it at the next step if it runs."""
        job.cancel()
        if job in self._queue:
            self._queue.remove(job)
            job.emit(Event(CANCELLED))
            log.info("job %d cancelled while queued", job.id)
            self._announce_positions()

    async def stop(self, name: str) -> bool:
        """Unload a model now, or as soon as its running job ends. False if it was not loaded."""
        model = self._loaded.get(name)
        if model is None:
            return False
        model.stop_requested = True
        model.keep_for(0)
        self._wake.set()
        if self._running is None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(model.unloaded.wait(), STOP_WAIT)
        return True

    # -- the loop --------------------------------------------------------------------------------

    async def _run_forever(self):
        while True:
            try:
                await self._step()
            except asyncio.CancelledError:
                raise
            except Exception:  # never let one bad unload stop the queue
                log.exception("scheduler error")
                await asyncio.sleep(0.1)

    async def _step(self):
        """Free what expired, then run the next job, or sleep until something happens."""
        await self._unload_expired()
        if self._queue:
            job = self._queue.popleft()
            self._announce_positions()
            await self._run(job)
            if self._loaded:  # something ran on the device (MLX is there): its peak's buffers go soon
                self._give_back_at = time.monotonic() + self.idle_give_back_s
            return
        if self._give_back_at is not None and time.monotonic() >= self._give_back_at:
            from ollama_img.memory.device import give_back

            self._give_back_at = None
            await self._in_worker(give_back)
            return
        self._wake.clear()
        deadline = min((m.seconds_left() for m in self._loaded.values()), default=math.inf)
        if self._give_back_at is not None:
            deadline = min(deadline, self._give_back_at - time.monotonic())
        timeout = None if math.isinf(deadline) else max(0.0, deadline)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout)

    def _announce_positions(self):
        for position, job in enumerate(self._queue, 1):
            job.emit(Event(QUEUED, position=position))

    async def _in_worker(self, fn, *args):
        return await self._loop.run_in_executor(self._worker, fn, *args)

    async def _run(self, job: Job):
        """Run a job on the device; its PNGs are encoded (and it is answered) in a task of its own."""
        self._running = job
        timings = Timings(queue=time.monotonic() - job.created)
        params = job.params
        keepalive = self.default_keepalive if params.keep_alive is None else params.keep_alive
        try:
            job.check_cancelled()
            model = await self._ensure_loaded(job, timings)
            model.busy = True
            try:
                job.check_cancelled()
                budget, _ = await self._admit(job, model.name, model.planner, model)
                started = time.monotonic()
                images, resolved = (
                    await self._in_worker(self._generate, job, model, budget) if params.prompt else ([], {})
                )
                timings.generate = time.monotonic() - started
                model.warm = model.warm or bool(images)
            finally:
                model.busy = False
                model.keep_for(0 if model.stop_requested else keepalive)
            task = asyncio.create_task(self._finish(job, model, images, resolved, timings))
            self._finishing.add(task)
            task.add_done_callback(self._finishing.discard)
            waited_for = bool(self._queue)  # a queued job is a better warm-up than a made-up one
            if not (
                params.prompt or model.warm or model.stop_requested or waited_for
            ) and self.warm_up.wanted(model.pipe):
                await self._warm_up(model, keepalive)  # answered already: nobody waits for this
        except JobCancelled:
            log.info("job %d cancelled", job.id)
            job.emit(Event(CANCELLED))
        except UserError as exc:
            log.info("job %d rejected: %s", job.id, exc)
            job.emit(Event(FAILED, error=exc))
        except Exception as exc:
            log.exception("job %d failed", job.id)
            job.emit(Event(FAILED, error=exc))
        finally:
            self._running = None

    async def _finish(self, job: Job, model: LoadedModel, images, resolved: dict, timings: Timings):
        """Encode the PNGs (CPU work: on other threads, while the device runs the next job), then answer."""
        try:
            job.check_cancelled()
            started = time.monotonic()
            result = await self._result(job, model, images, resolved, timings)
            timings.encode = time.monotonic() - started
        except JobCancelled:
            log.info("job %d cancelled", job.id)
            job.emit(Event(CANCELLED))
            return
        except asyncio.CancelledError:  # the engine is closing
            job.emit(Event(CANCELLED))
            raise
        except Exception as exc:
            log.exception("job %d failed", job.id)
            job.emit(Event(FAILED, error=exc))
            return
        job.emit(Event(DONE, result=result))
        if images:
            log.info(
                "job %d done: %s, %d image(s) %dx%d, %d steps in %.2fs (%s; +%.2fs encoding)",
                job.id,
                model.name,
                len(images),
                resolved["width"],
                resolved["height"],
                resolved["steps"],
                timings.generate,
                resolved["phases"],
                timings.encode,
            )

    async def _ensure_loaded(self, job: Job, timings: Timings) -> LoadedModel:
        name = job.params.model
        current = self._loaded.get(name)
        if current is not None and (job.digest is None or current.digest == job.digest):
            return current
        if current is not None:
            log.info("%s changed in the store since it was loaded; reloading", name)
            await self._unload(current)
        while len(self._loaded) >= self.max_loaded:
            await self._unload(min(self._loaded.values(), key=lambda m: m.last_used))
        if self._device is None:
            from ollama_img.memory.device import device_kind

            self._device = await self._in_worker(device_kind)
        planner = await self._in_worker(planner_for, name, self._device)  # reads the store, as loading does
        budget, plan = await self._admit(job, name, planner)  # never start a load that cannot fit
        job.emit(Event(LOADING))
        started = time.monotonic()
        log.info("loading %s: %s", name, _described(plan))
        note = warmup.compile_note()
        if note:
            log.info(note)
        pipe, size, phases = await self._in_worker(self._load_and_measure, name, planner.within(budget), plan)
        timings.load = time.monotonic() - started
        model = LoadedModel(
            name=name, digest=getattr(pipe, "digest", None), pipe=pipe, size=size, planner=planner, plan=plan
        )
        model.keep_for(self.default_keepalive)
        self._loaded[name] = model
        log.info("loaded %s (%d bytes) in %.2fs (%s)", name, model.size, timings.load, phases)
        return model

    def _ask(self, job: Job, model: LoadedModel | None) -> Ask:
        """What the job asks that memory depends on; what it leaves out, the loaded model's defaults."""
        params = job.params
        pipe = model.pipe if model is not None else None
        defaults = getattr(pipe, "defaults", None)
        guidance = params.guidance if params.guidance is not None else getattr(defaults, "guidance", None)
        guided = bool(guidance) and (pipe is None or pipe.capabilities.guidance)
        return Ask(
            width=params.width or getattr(defaults, "width", None),
            height=params.height or getattr(defaults, "height", None),
            count=params.n,
            batch=2 if guided else 1,
            prompts=(params.prompt, params.negative_prompt) if params.prompt else (),
            adapters=job.adapters_held,
        )

    async def _admit(
        self, job: Job, name: str, planner: Planner | None, model: LoadedModel | None = None
    ) -> tuple[Budget, MemoryPlan | None]:
        """The budget `name` may plan this job with (the engine's, less what other models hold), and the
        job's plan: unloads the least recently used idle models while the plan does not fit; a
        MemoryPlanError when it cannot fit even alone. Sets MLX's memory limit to the plan's peak beside
        what the other models hold, within the engine's budget."""
        from ollama_img.memory.device import apply_limits, engine_budget

        if planner is None:  # a model loaded before planning existed for it
            return Budget(0, "unplanned"), None
        ask = self._ask(job, model)
        while True:
            total = await self._in_worker(engine_budget, self.gpu_memory)
            others = [m for m in self._loaded.values() if m.name != name]
            held = sum(m.size for m in others)
            budget = left_for(total, held)
            try:
                plan = ask.plan(planner, budget)
            except MemoryPlanError:
                idle = [m for m in others if not m.busy]
                if not idle:
                    raise
                evicted = min(idle, key=lambda m: m.last_used)
                log.info("unloading %s to make room for %s", evicted.name, name)
                await self._unload(evicted)
                continue
            await self._in_worker(apply_limits, plan.memory_limit(held))
            if model is not None:
                model.plan = plan
            return budget, plan

    async def _warm_up(self, model: LoadedModel, keepalive: float):
        """Run the model's warm-up on the worker before the next job; a failure only costs the warm-up."""
        model.busy = True
        try:
            await self._in_worker(self.warm_up.run, model.pipe, model.name)
            model.warm = True
        except Exception:
            log.exception("warm-up of %s failed; the model stays loaded", model.name)
        finally:
            model.busy = False
            model.keep_for(0 if model.stop_requested else keepalive)

    async def _unload(self, model: LoadedModel):
        if self._loaded.get(model.name) is model:
            del self._loaded[model.name]
        await self._in_worker(_release, model, not self._loaded)
        model.unloaded.set()
        log.info("unloaded %s", model.name)

    async def _unload_expired(self):
        for model in list(self._loaded.values()):
            if not model.busy and model.seconds_left() <= 0:
                await self._unload(model)

    # -- on the worker thread --------------------------------------------------------------------

    @staticmethod
    def _load_and_measure(name: str, planner: Planner, plan: MemoryPlan):
        # MLX streams are per thread: everything that touches the model's arrays stays on the worker.
        from ollama_img.loader import load_stored
        from ollama_img.phases import recording

        with recording() as timer:
            # A store name only: never a folder on the engine's disk.
            pipe = load_stored(name, planner=planner, plan=plan)
        return pipe, int(pipe.resident_bytes), timer.summary()

    @staticmethod
    def _resolve(pipe, params: GenerateParams) -> dict:
        """The request with the pipeline's defaults (size, steps, guidance, strength) for what it leaves
        out; the size from its images when they imply one (`size_for`)."""
        defaults, capabilities = pipe.defaults, pipe.capabilities
        guidance = defaults.guidance if params.guidance is None else params.guidance
        width, height = pipe.size_for(
            width=params.width, height=params.height, **image_keywords(capabilities, params.asked())
        )
        strength = None
        if params.images and capabilities.image_input:
            fallback = defaults.mask_strength if params.mask is not None else defaults.strength
            strength = params.strength if params.strength is not None else fallback
        return {
            "width": width,
            "height": height,
            "steps": params.steps or defaults.steps,
            "guidance": guidance if capabilities.guidance else None,
            "strength": strength,
        }

    def _validate(self, pipe, params: GenerateParams, name=api_name) -> dict:
        check_supported(params.model, params.asked(), pipe.capabilities, name)
        try:
            resolved = self._resolve(pipe, params)
            pipe.validate(width=resolved["width"], height=resolved["height"], steps=resolved["steps"])
        except ValueError as exc:
            raise UserError(str(exc)) from None
        check_pixels(resolved["width"], resolved["height"])  # a default side, or a start image's size
        return resolved

    @staticmethod
    def _model_options(pipe, params: GenerateParams, resolved: dict) -> dict:
        """generate()'s keywords for the options of the model's capabilities that have a value: the
        request's, else the model's default (guidance, strength); its images as the model takes them."""
        chosen = {**params.asked(), **resolved}
        options = {
            option.field: chosen[option.field]
            for option in OPTIONS
            if option.capability
            and option not in INPUTS
            and getattr(pipe.capabilities, option.capability)
            and chosen.get(option.field) is not None
        }
        return {**options, **image_keywords(pipe.capabilities, params.asked())}

    def _generate(self, job: Job, model: LoadedModel, budget: Budget):
        from ollama_img.phases import recording

        if model.planner is not None and hasattr(model.pipe, "planner"):
            model.pipe.planner = model.planner.within(budget)  # the pipeline plans each image with it
        try:
            with recording() as timer:
                images, resolved = self._generate_images(job, model)
        finally:
            model.size = int(model.pipe.resident_bytes)
            model.plan = getattr(model.pipe, "memory_plan", None) or model.plan
        resolved["phases"] = timer.summary()
        return images, resolved

    def _generate_images(self, job: Job, model: LoadedModel):
        params = job.params
        resolved = self._validate(model.pipe, params)
        options = self._model_options(model.pipe, params, resolved)
        first_seed = params.seed if params.seed is not None else _random_seed()
        resolved["seeds"] = [first_seed + i for i in range(params.n)]
        images = []
        for index, seed in enumerate(resolved["seeds"]):
            job.check_cancelled()

            def on_step(step, total, index=index):
                job.emit_threadsafe(Event(STEP, completed=index * total + step, total=params.n * total))
                job.check_cancelled()

            images.append(
                model.pipe.generate(
                    params.prompt,
                    width=resolved["width"],
                    height=resolved["height"],
                    steps=resolved["steps"],
                    seed=seed,
                    on_step=on_step,
                    **options,
                )
            )
        return images, resolved

    async def _result(self, job: Job, model: LoadedModel, images, resolved, timings) -> Result:
        params = job.params
        takes_negative = model.pipe is not None and model.pipe.capabilities.negative_prompt
        recipes = [
            Recipe(
                prompt=params.prompt,
                negative_prompt=(params.negative_prompt or "") if takes_negative else None,
                seed=seed,
                steps=resolved["steps"],
                guidance=resolved["guidance"],
                width=resolved["width"],
                height=resolved["height"],
                model=model.name,
                digest=model.digest,
                teacache=params.teacache,
                images=tuple(item.sha256 for item in params.images or ()),
                mask=params.mask.sha256 if params.mask is not None else None,
                strength=resolved.get("strength"),
                loras=params.loras or (),
            )
            for seed in resolved.get("seeds", [])
        ]
        # PNG compression is CPU work, not device work: keep it off the MLX worker.
        pngs = await asyncio.gather(
            *(
                self._loop.run_in_executor(None, encode_png, image, recipe)
                for image, recipe in zip(images, recipes, strict=True)
            )
        )
        return Result(
            model=model.name,
            digest=model.digest,
            pngs=list(pngs),
            seeds=resolved.get("seeds", []),
            width=resolved.get("width", 0),
            height=resolved.get("height", 0),
            steps=resolved.get("steps", 0),
            guidance=resolved.get("guidance"),
            timings=timings,
        )


def _described(plan: MemoryPlan) -> str:
    from ollama_img.formatting import human_bytes

    return f"{'; '.join(plan.summary())}; peak about {human_bytes(plan.peak)} of {plan.budget.describe()}"


def _random_seed() -> int:
    """A seed short enough to read back and type again."""
    import secrets

    return secrets.randbelow(2**32)
