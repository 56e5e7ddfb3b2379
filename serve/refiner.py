"""SDXL's ensemble of experts over HTTP: the base model denoises up to `switch_at` of the steps
and hands its latents to a refiner model of the same server, which finishes them (diffusers'
`denoising_end` and `denoising_start`; A1111's `refiner_checkpoint` and `refiner_switch_at`)."""

from __future__ import annotations

import dataclasses

from fastapi import Request

from sdtrt.errors import InputError
from sdtrt.serve.jobs import GenerationParams, Job, JobState
from sdtrt.serve.owners import owner_of
from sdtrt.serve.service import Service
from sdtrt.serve.waiting import service_for, wait_or_cancel


async def refined(
    request: Request,
    base: Service,
    params: GenerationParams,
    refiner: str,
    switch_at: float,
    deadline_s: float | None = None,
) -> tuple[Service, Job]:
    """Run the base model to `switch_at`, then the refiner; the refiner's job and service (or
    the base model's, where its part did not succeed)."""
    if not 0 < switch_at < 1:
        raise InputError(f"the refiner's switch point must be between 0 and 1, got {switch_at}")
    if params.task is not None:
        raise InputError("a refiner finishes text to image here: leave the image out")
    finisher = await service_for(request, refiner)
    owner = owner_of(request)
    first = base.submit(dataclasses.replace(params, denoising_end=switch_at), owner, deadline_s)
    await wait_or_cancel(request, base, first)
    base.forget(first)
    if first.state is not JobState.SUCCEEDED or first.result is None:
        return base, first
    handed = dataclasses.replace(
        params,
        seed=first.calls[0].seed,  # the base model's, drawn there if the request had none
        latents=first.result.latents,
        denoising_start=switch_at,
        loras=(),  # a LoRA of the base model is not the refiner's
        control=None,  # nor are its ControlNets
    )
    second = finisher.submit(handed, owner, deadline_s)
    await wait_or_cancel(request, finisher, second)
    return finisher, second
