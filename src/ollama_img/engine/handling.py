"""How a request becomes a job, and how the job's events reach the client: shared by both APIs.

A client that disconnects (Ctrl-C in `run`) cancels its job: dropped if still queued, stopped at the
next denoising step if running.
"""

import asyncio
from collections.abc import AsyncIterator, Callable

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from ollama_img.engine import catalog
from ollama_img.engine.jobs import Event, Job
from ollama_img.engine.params import GenerateParams, parse_json_object, with_model_params
from ollama_img.engine.scheduler import Scheduler
from ollama_img.errors import UserError
from ollama_img.options import Option, api_name

# What a client still connected hears when its job is cancelled: only a shutdown cancels a live client's job.
SHUTTING_DOWN = "the job was cancelled: the engine is shutting down"


def error_status(exc: Exception) -> int:
    return getattr(exc, "status", 500) if isinstance(exc, UserError) else 500


def error_message(exc: Exception) -> str:
    if isinstance(exc, UserError):
        return str(exc)
    return f"internal error in the engine: {type(exc).__name__}: {exc} (see the engine log)"


INLINE_JSON_BYTES = 2**20  # bodies larger than this are parsed on a thread, not on the event loop


async def json_body(request: Request) -> dict:
    """The request's JSON object (the body is already in memory: `guard.BodyLimit` read it, bounded)."""
    return await parse_off_the_loop(await request.body())


async def parse_off_the_loop(raw: bytes) -> dict:
    """A body's JSON object; a large one (base64 images) is parsed on a thread, so other requests (even
    `ps`) are not held up meanwhile."""
    if len(raw) > INLINE_JSON_BYTES:
        return await run_in_threadpool(parse_json_object, raw)
    return parse_json_object(raw)


async def wait_for_disconnect(request: Request):
    """Return once the client has gone away (the request body must have been read already)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def outcome_unless_disconnected(request: Request, scheduler: Scheduler, job: Job) -> Event | None:
    """The job's final event, or None after cancelling it because the client left first."""
    outcome = asyncio.ensure_future(job.outcome())
    gone = asyncio.ensure_future(wait_for_disconnect(request))
    try:
        done, _ = await asyncio.wait({outcome, gone}, return_when=asyncio.FIRST_COMPLETED)
        if outcome in done:
            return outcome.result()
        scheduler.cancel(job)
        return None
    finally:
        for task in (outcome, gone):
            task.cancel()


async def events_until_disconnect(request: Request, scheduler: Scheduler, job: Job) -> AsyncIterator[Event]:
    """The job's events; if the client disconnects (or the stream is torn down), the job is cancelled."""

    def on_gone(task: asyncio.Future):
        if task.cancelled():
            return
        task.exception()  # retrieved, so asyncio does not report it as unhandled
        scheduler.cancel(job)

    gone = asyncio.ensure_future(wait_for_disconnect(request))
    gone.add_done_callback(on_gone)
    try:
        async for event in job.stream():
            yield event
    finally:
        gone.cancel()
        if not job.finished:
            scheduler.cancel(job)


async def submit(
    request: Request, params: GenerateParams, name: Callable[[Option], str] = api_name
) -> tuple[Scheduler, Job]:
    """Check the model exists (404 otherwise) and can do what is asked (400, naming the option or
    size it cannot, as `name` spells it), fill in its PARAMETERs for what the request leaves out,
    check that its adapters are in the store and fit it (400), decode the images it sent (400 for a
    damaged one), then queue it."""
    scheduler: Scheduler = request.app.state.scheduler
    digest, capabilities, model_params = await run_in_threadpool(catalog.lookup, params.model)
    scheduler.check(params, capabilities, name)  # what the request itself asks, named as it spelled it
    params = with_model_params(params, model_params)
    adapters_held = None
    if params.loras:
        adapters_held = await run_in_threadpool(catalog.check_adapters, params.model, params.loras)
    if params.images:
        params = await run_in_threadpool(params.with_decoded_images)
    return scheduler, scheduler.submit(params, digest, adapters_held)
