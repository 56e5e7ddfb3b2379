"""Waiting on jobs from async handlers: woken by the worker, not by polling; watching the client."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import anyio.to_thread
from fastapi import Request

from sdtrt.serve.jobs import Job
from sdtrt.serve.service import Service

# How often a waiting handler looks whether its client went away; the job itself wakes it.
DISCONNECT_CHECK_S = 0.25


async def job_changes(job: Job) -> AsyncIterator[None]:
    """Yield once now and after each change of the job, until it finishes (then once more)."""
    loop = asyncio.get_running_loop()
    changed = asyncio.Event()

    def wake() -> None:  # from the worker thread
        loop.call_soon_threadsafe(changed.set)

    unsubscribe = job.subscribe(wake)
    try:
        while True:
            changed.clear()
            yield
            if job.state.finished:
                return
            try:
                await asyncio.wait_for(changed.wait(), DISCONNECT_CHECK_S)
            except asyncio.TimeoutError:
                pass
    finally:
        unsubscribe()


async def wait_or_cancel(request: Request, service: Service, job: Job) -> None:
    """Wait for the job; cancel it if the client disconnects first."""
    async for _ in job_changes(job):
        if job.state.finished:
            return
        if await request.is_disconnected():
            service.cancel(job.id)
            return


# How long a request waits for a model it named to load and warm up.
MODEL_LOAD_TIMEOUT_S = 600.0


async def service_for(request: Request, model: str | None = None) -> Service:
    """The service of the model a request names (None: the default), waiting for it to load
    if this request started it."""
    models = request.app.state.models
    service: Service = models.get(model)
    if models.loading_on_demand(service):
        await anyio.to_thread.run_sync(service.wait_ready, MODEL_LOAD_TIMEOUT_S)
    return service
