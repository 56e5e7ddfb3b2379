"""A job's pipeline calls, built and checked when it is submitted: a request the engines cannot
make is refused then (400), not when a worker reaches it."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from sdtrt.engine.manifest import Manifest
from sdtrt.errors import InputError
from sdtrt.runtime.arguments import MAX_SEED, make_request
from sdtrt.runtime.controlnet import make_controls
from sdtrt.runtime.families import family_of
from sdtrt.runtime.request import Controls, Request
from sdtrt.runtime.skip_guidance import skip_layers
from sdtrt.runtime.task_setup import ImageInputs, load_inputs, output_size
from sdtrt.runtime.tasks import check_fraction, check_strength
from sdtrt.serve.jobs import ControlArguments, GenerationParams


@dataclass(frozen=True)
class Plan:
    calls: list[Request]  # each made and checked once, run as they are
    call_inputs: list[ImageInputs | None]  # per call, the images (or latents) it starts from
    strength: float | None
    controls: Controls | None = None


def plan_calls(manifest: Manifest, default_scheduler: str, params: GenerationParams) -> Plan:
    """The pipeline calls for a job, each checked against the engines' ranges (and, for image
    to image and inpainting, its images against the model)."""
    if params.images < 1:
        raise InputError(f"the number of images must be at least 1, got {params.images}")
    task = params.task
    family = family_of(manifest.model)
    if params.loras and not family.switches_loras:
        raise InputError("LoRAs switch on SD 1.x, 2.x and SDXL engines; not on SD 3 yet")
    denoiser = manifest.components[family.denoiser].io
    handed = None  # a refiner's: the base model's latents, one array per call
    if params.latents is not None:
        handed = [
            load_inputs(a, None, None, denoiser=denoiser, model=manifest.model)
            for a in params.latents
        ]
    inputs = (
        handed[0]
        if handed
        else load_inputs(
            None if task is None else task.image,
            None if task is None else task.mask,
            None if task is None else task.strength,
            denoiser=denoiser,
            model=manifest.model,
            padding_mask_crop=None if task is None else task.padding_mask_crop,
        )
    )
    check_fraction(params.denoising_start, "denoising_start")
    check_fraction(params.denoising_end, "denoising_end")
    if params.denoising_start is not None and inputs is None:
        raise InputError("denoising_start continues from an image or latents")
    controls = _controls(manifest, params.control, inputs)
    height, width = params.height, params.width
    if controls is not None:
        height, width = controls.size(height, width, manifest.model.vae_scale_factor)
    height, width = output_size(inputs, manifest, height, width)
    first = make_request(
        manifest=manifest,
        default_scheduler=default_scheduler,
        prompt=params.prompt,
        # None, not "": SDXL conditions on zeros without a negative prompt.
        negative_prompt=params.negative_prompt or None,
        height=height,
        width=width,
        num_inference_steps=params.steps,
        guidance_scale=params.guidance,
        seed=params.seed,
        scheduler=params.scheduler,
        num_images_per_prompt=1 if params.per_image_seeds else params.images,
        prompt_2=params.prompt_2,
        negative_prompt_2=params.negative_prompt_2,
        prompt_3=params.prompt_3,
        negative_prompt_3=params.negative_prompt_3,
        max_sequence_length=params.max_sequence_length,
        skip_layers=skip_layers(params.skip_guidance_layers),
        task="txt2img" if inputs is None else inputs.kind,
        controlled=controls is not None,
        sizes=params.sizes,
        prompt_syntax=params.prompt_syntax,
        vae=params.vae,
    )
    if task is not None and inputs is not None and params.denoising_start is None:
        chosen = task.strength
        if chosen is None:
            chosen = family.default_strength(manifest.model, inputs.kind, controls is not None)
        check_strength(chosen, first.steps, family.skipped_steps)
    strength = None if task is None else task.strength
    calls = [first]
    if params.per_image_seeds:
        if first.seed + params.images - 1 > MAX_SEED:
            raise InputError(f"seed {first.seed} + {params.images} images passes 2**64 - 1")
        calls = [dataclasses.replace(first, seed=first.seed + i) for i in range(params.images)]
    if handed is not None and len(handed) != len(calls):
        raise InputError(f"{len(handed)} latents handed over for {len(calls)} calls")
    return Plan(calls, handed or [inputs] * len(calls), strength, controls)


def _controls(
    manifest: Manifest, control: ControlArguments | None, inputs: ImageInputs | None
) -> Controls | None:
    if control is None:
        return None
    return make_controls(
        manifest.model,
        control.images,
        control.names,
        control.scales,
        control.starts,
        control.ends,
        control.guess_mode,
        inputs,
    )
