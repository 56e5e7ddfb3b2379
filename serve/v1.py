"""/v1: text to image with the `run` command's parameters, jobs, progress as server-sent events."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, StreamingResponse

from sdtrt.errors import InputError
from sdtrt.runtime.request import SizeConditioning
from sdtrt.runtime.schedulers import scheduler_names
from sdtrt.serve.controlnet_units import v1_controls
from sdtrt.serve.encoding import image_from_base64
from sdtrt.serve.jobs import GenerationParams, ImageTask, Job, JobState
from sdtrt.serve.options import ServeOptions
from sdtrt.serve.owners import owner_of
from sdtrt.serve.refiner import refined
from sdtrt.serve.schemas import (
    Img2ImgRequest,
    JobAccepted,
    JobStatus,
    ServiceInfo,
    SizeInfo,
    Txt2ImgRequest,
    Txt2ImgResponse,
)
from sdtrt.serve.service import Service
from sdtrt.serve.waiting import job_changes, service_for, wait_or_cancel

v1_router = APIRouter(prefix="/v1", tags=["v1"])

# What a waiting client gets when its job did not succeed.
_FAILURE_STATUS = {JobState.CANCELLED: 409, JobState.EXPIRED: 408, JobState.FAILED: 500}


def _job(request: Request, job_id: str) -> tuple[Service, Job]:
    """The job and its model's service, to the client that submitted it only."""
    return request.app.state.models.find_job(job_id, owner_of(request))  # type: ignore[no-any-return]


def check_limits(options: ServeOptions, prompt: str, negative: str, steps: int) -> None:
    """The server's own limits, beyond what the engines can do."""
    for what, text in (("prompt", prompt), ("negative_prompt", negative)):
        if len(text) > options.max_prompt_chars:
            raise InputError(
                f"{what} is {len(text)} characters; the limit is {options.max_prompt_chars}"
            )
    if not 1 <= steps <= options.max_steps:
        raise InputError(f"steps must be 1 to {options.max_steps}, got {steps}")


def result_body(job: Job) -> Txt2ImgResponse:
    assert job.result is not None
    return Txt2ImgResponse(
        id=job.id,
        images=[base64.b64encode(png).decode("ascii") for png in job.result.pngs],
        seeds=job.result.seeds,
        parameters=job.result.infotexts,
        timings=job.result.timings,
    )


def failure_response(job: Job) -> JSONResponse:
    status = _FAILURE_STATUS.get(job.state, 500)
    return JSONResponse({"detail": job.error or job.state.value, "id": job.id}, status_code=status)


def status_body(service: Service, job: Job) -> JobStatus:
    done = job.state is JobState.SUCCEEDED and job.result is not None
    return JobStatus(
        id=job.id,
        state=job.state.value,
        step=job.step,
        steps=job.total_steps,
        queue_position=service.queue_position(job),
        error=job.error,
        result=result_body(job) if done else None,
    )


@v1_router.get("/info")
def info(
    request: Request,
    model: Annotated[
        str | None, Query(description="A model of this server; the default's.")
    ] = None,
) -> ServiceInfo:
    """What a model's engines can make: sizes, batch, schedulers; and the server's limits."""
    models = request.app.state.models
    service = models.get(model)
    ranges = service.manifest.ranges
    options = request.app.state.options
    return ServiceInfo(
        model=models.name_of(model),
        models=models.names,
        sizes=SizeInfo(
            min=ranges.size.min,
            opt=ranges.size.opt,
            max=ranges.size.max,
            step=ranges.size_step,
            native=service.manifest.model.native_size,
        ),
        max_batch=ranges.max_batch,
        schedulers=scheduler_names(),
        default_scheduler=service.default_scheduler,
        max_steps=options.max_steps,
        max_prompt_chars=options.max_prompt_chars,
        workers=service.workers,
        queue=service.queue_size,
    )


@v1_router.post(
    "/txt2img",
    response_model=Txt2ImgResponse,
    responses={202: {"model": JobAccepted}, 429: {}, 400: {}, 422: {}},
)
async def txt2img(
    body: Txt2ImgRequest,
    request: Request,
    wait: Annotated[
        bool, Query(description="false: answer 202 with the job id at once, poll /v1/jobs/{id}.")
    ] = True,
) -> Txt2ImgResponse | JSONResponse:
    """Generate; waits for the images unless `wait=false`. A client that disconnects cancels."""
    return await _generate(request, body, None, wait)


@v1_router.post(
    "/img2img",
    response_model=Txt2ImgResponse,
    responses={202: {"model": JobAccepted}, 429: {}, 400: {}, 422: {}},
)
async def img2img(
    body: Img2ImgRequest,
    request: Request,
    wait: Annotated[
        bool, Query(description="false: answer 202 with the job id at once, poll /v1/jobs/{id}.")
    ] = True,
) -> Txt2ImgResponse | JSONResponse:
    """Image to image, or inpainting with a mask; otherwise as /v1/txt2img."""
    task = ImageTask(
        image=image_from_base64(body.image, "image"),
        mask=None if body.mask is None else image_from_base64(body.mask, "mask"),
        strength=body.strength,
        padding_mask_crop=body.padding_mask_crop,
    )
    return await _generate(request, body, task, wait)


def _sizes(body: Txt2ImgRequest) -> SizeConditioning | None:
    """SDXL's micro-conditioning where the request sets any of it."""
    names = (
        "original_size",
        "crops_coords_top_left",
        "target_size",
        "aesthetic_score",
        "negative_aesthetic_score",
    )
    return SizeConditioning.given(**{name: getattr(body, name) for name in names})


async def _generate(
    request: Request, body: Txt2ImgRequest, task: ImageTask | None, wait: bool
) -> Txt2ImgResponse | JSONResponse:
    service = await service_for(request, body.model)
    check_limits(request.app.state.options, body.prompt, body.negative_prompt, body.steps)
    params = GenerationParams(
        prompt=body.prompt,
        negative_prompt=body.negative_prompt,
        steps=body.steps,
        guidance=body.guidance,
        seed=body.seed,
        height=body.height,
        width=body.width,
        scheduler=body.scheduler,
        images=body.batch,
        task=task,
        prompt_2=body.prompt_2,
        negative_prompt_2=body.negative_prompt_2,
        prompt_3=body.prompt_3,
        negative_prompt_3=body.negative_prompt_3,
        max_sequence_length=body.max_sequence_length,
        skip_guidance_layers=(
            None if body.skip_guidance_layers is None else tuple(body.skip_guidance_layers)
        ),
        sizes=_sizes(body),
        loras=request.app.state.loras.sources(body.loras or {}),
        control=v1_controls(body.control, body.guess_mode),
        vae=body.vae,
    )
    if body.refiner is not None:
        if not wait:
            raise InputError("a request with a refiner waits for its images: leave wait=true")
        switch_at = 0.8 if body.refiner_switch_at is None else body.refiner_switch_at
        service, job = await refined(
            request, service, params, body.refiner, switch_at, body.deadline
        )
        answer = result_body(job) if job.state is JobState.SUCCEEDED else failure_response(job)
        service.forget(job)
        return answer
    job = service.submit(params, owner=owner_of(request), deadline_s=body.deadline)
    if not wait:
        accepted = JobAccepted(
            id=job.id, state=job.state.value, queue_position=service.queue_position(job)
        )
        return JSONResponse(accepted.model_dump(), status_code=202)
    await wait_or_cancel(request, service, job)
    answer = result_body(job) if job.state is JobState.SUCCEEDED else failure_response(job)
    service.forget(job)
    return answer


@v1_router.get("/jobs/{job_id}")
def job_status(job_id: str, request: Request) -> JobStatus:
    """State, step i of n, queue position; the images once it succeeded. Only the client that
    submitted the job (same address, key and X-Client-Id) sees it; others get 404."""
    service, job = _job(request, job_id)
    return status_body(service, job)


@v1_router.delete("/jobs/{job_id}", status_code=202)
def cancel_job(job_id: str, request: Request) -> JobStatus:
    """Cancel this job only: dropped if queued, stopped after its current step if running."""
    service, job = _job(request, job_id)
    return status_body(service, service.cancel(job.id, owner_of(request)))


@v1_router.get("/jobs/{job_id}/events", response_class=StreamingResponse)
async def job_events(job_id: str, request: Request) -> StreamingResponse:
    """Server-sent events: `progress` on each change, then one `done` with the final state."""
    service, job = _job(request, job_id)

    async def stream() -> AsyncIterator[str]:
        seen = -1
        async for _ in job_changes(job):
            if await request.is_disconnected():
                return
            if job.version == seen and not job.state.finished:
                continue
            seen = job.version
            status = status_body(service, job).model_dump(exclude={"result"})
            kind = "done" if job.state.finished else "progress"
            yield f"event: {kind}\ndata: {json.dumps(status)}\n\n"

    headers = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
    return StreamingResponse(stream(), media_type="text/event-stream", headers=headers)
