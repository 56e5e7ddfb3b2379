"""The one denoising loop every family and task runs: the denoiser called once per step (the
guided and unguided rows in one call), classifier-free guidance, the scheduler's step, and the
task's blend. What differs between families lives in the denoiser's inputs (runtime/families/);
what differs between tasks, in where the loop starts and what it blends (runtime/tasks.py)."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from sdtrt.engine.base import Engine
from sdtrt.engine.manifest import Manifest
from sdtrt.runtime.controlnet import ControlRun
from sdtrt.runtime.families import family_of
from sdtrt.runtime.noise import NoiseSource
from sdtrt.runtime.numerics import check_step
from sdtrt.runtime.request import Request
from sdtrt.runtime.schedulers import create_scheduler
from sdtrt.runtime.skip_guidance import SkipLayerGuidance
from sdtrt.runtime.tasks import Task, cutoff_timestep
from sdtrt.runtime.timings import Timings

# Called after each denoiser step with (step index, number of steps). What it raises ends the
# call there and reaches the caller unchanged (the service cancels jobs this way).
StepCallback = Callable[[int, int], None]


def denoise(
    denoiser: Engine,
    request: Request,
    conditioning: Mapping[str, np.ndarray],
    task: Task,
    *,
    scheduler_config: Mapping[str, Any],
    manifest: Manifest,
    source: NoiseSource,
    timings: Timings,
    step_callback: StepCallback | None = None,
    denoising_end: float | None = None,
    skip_guidance: SkipLayerGuidance | None = None,
    control: ControlRun | None = None,
) -> np.ndarray:
    """The latents after the loop: from the task's start to the end of the schedule, or to
    `denoising_end` of it (SDXL's base model handing over to a refiner)."""
    family = family_of(manifest.model)
    config = family.scheduler_config(scheduler_config, request, manifest.model)
    scheduler = create_scheduler(request.scheduler, config)
    begins = task.start(scheduler, scheduler.plan(request.steps))
    plan, latents = begins.plan, begins.latents
    timesteps = scheduler.timesteps(plan)
    end = len(timesteps)
    if denoising_end is not None:  # the calls at or above the cut-off timestep
        cutoff = cutoff_timestep(denoising_end, scheduler)
        end = begins.begin + int((timesteps[begins.begin :] >= cutoff).sum())
    state = scheduler.initial_state(plan)
    guidance = np.float32(request.guidance_scale)
    rows = 2 if request.guided else 1
    # Reused across steps: every allocation after an engine call costs tens of microseconds
    # (the engine has just evicted the allocator's and interpreter's working set).
    channels = latents.shape[1]
    extra = task.denoiser_extra  # constant over the loop: written once, after the latents
    total = channels if extra is None else channels + extra.shape[1]
    model_input = np.empty((rows * latents.shape[0], total, *latents.shape[2:]), np.float32)
    if extra is not None:
        for half in np.split(model_input, rows):
            np.copyto(half[:, channels:], extra)
    timestep = np.empty((model_input.shape[0],), dtype=np.float32)
    feeds = {"sample": model_input, "timestep": timestep, **conditioning}  # filled in place
    if control is not None:  # zeros until a ControlNet acts
        feeds.update(control.zeros)
    steps_run = len(timesteps) - begins.begin  # what a ControlNet's start and end are parts of
    for i in range(begins.begin, end):
        t = timesteps[i]
        mark = time.perf_counter()
        scaled = scheduler.scale_model_input(latents, i, plan)
        for half in np.split(model_input, rows):
            np.copyto(half[:, :channels], scaled)
        timestep.fill(t)
        controlled = 0.0  # seconds in the ControlNets this step
        if control is not None and control.units:
            controlled = time.perf_counter()
            latent_input = model_input[:, :channels]  # not an inpainting UNet's mask channels
            step = i - begins.begin
            feeds.update(control.residuals(step, steps_run, latent_input, timestep))
            controlled = time.perf_counter() - controlled
            timings.controlnet.append(controlled)
        called = time.perf_counter()
        prediction = denoiser.infer(feeds)["noise_pred"]
        answered = time.perf_counter()
        if request.guided:
            # unconditional + guidance * (conditional - unconditional), in one new array:
            # schedulers keep past outputs, so this must not be a reused buffer.
            unconditional, conditional = np.split(prediction, 2)
            prediction = np.subtract(conditional, unconditional)
            prediction *= guidance
            prediction += unconditional
            if skip_guidance is not None and skip_guidance.active(i - begins.begin):
                prediction = skip_guidance.apply(
                    denoiser, prediction, conditional, model_input, timestep
                )
        latents, state = scheduler.step(prediction, i, latents, plan, state, source.randn)
        latents = task.blend(latents, scheduler, plan, i)
        check_step(latents, i, end, manifest)
        timings.unet.append(answered - called)
        timings.scheduler.append(time.perf_counter() - mark - (answered - called) - controlled)
        if step_callback is not None:
            step_callback(i - begins.begin, end - begins.begin)
    return latents
