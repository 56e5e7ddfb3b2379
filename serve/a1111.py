"""The AUTOMATIC1111 web UI's HTTP API, the subset its clients use for text to image.

Request keys and response shapes follow A1111's `modules/api`: `info` is a JSON *string*,
`parameters` echoes the request, unknown keys are accepted and ignored. Unlike A1111,
`/interrupt` stops only the caller's own jobs (same address, key and X-Client-Id), and jobs run
side by side instead of behind one global lock.
"""

from __future__ import annotations

import base64
import json
import time
from typing import Any

from fastapi import APIRouter, Request
from PIL import ImageFilter, ImageOps
from pydantic import BaseModel, ConfigDict, Field

from sdtrt import __version__
from sdtrt.engine.manifest import Manifest
from sdtrt.errors import InputError
from sdtrt.runtime.families import family_of
from sdtrt.runtime.lora_library import take_tags
from sdtrt.serve.a1111_dialect import (
    SAMPLERS,
    SCHEDULE_TYPES,
    checkpoint_name,
    prompt_syntax_for,
    scheduler_for,
)
from sdtrt.serve.controlnet_units import a1111_controls
from sdtrt.serve.encoding import image_from_base64
from sdtrt.serve.jobs import GenerationParams, ImageTask, Job, JobState
from sdtrt.serve.models import ModelSet
from sdtrt.serve.owners import owner_of
from sdtrt.serve.refiner import refined
from sdtrt.serve.service import Service
from sdtrt.serve.v1 import check_limits, failure_response
from sdtrt.serve.waiting import service_for, wait_or_cancel

a1111_router = APIRouter(prefix="/sdapi/v1", tags=["A1111 API"])


class A1111Txt2Img(BaseModel):
    """A1111's StableDiffusionProcessingTxt2Img keys that change the image here."""

    model_config = ConfigDict(extra="allow")  # every other A1111 key is accepted and ignored

    prompt: str = ""
    negative_prompt: str = ""
    seed: int = -1
    subseed: int = -1
    sampler_name: str | None = None
    sampler_index: str = "Euler"
    scheduler: str | None = None
    batch_size: int = 1
    n_iter: int = 1
    steps: int = 50
    cfg_scale: float = 7.0
    width: int | None = Field(None, description="The model's native size if unset.")
    height: int | None = Field(None, description="The model's native size if unset.")
    send_images: bool = True
    styles: list[str] | None = None
    refiner_checkpoint: str | None = None
    refiner_switch_at: float = 0.8


class A1111Img2Img(A1111Txt2Img):
    """A1111's StableDiffusionProcessingImg2Img keys that change the image here. Its output is
    `width` x `height` (the image resized to it, A1111's resize mode 0) or, unset, the size of
    the image (inpainting: the model's own). `inpainting_fill` other than 1 ("original") and
    `resize_mode` are accepted and ignored: the masked area always starts from the image."""

    init_images: list[str] = Field(description="The image to start from (only the first is read).")
    mask: str | None = Field(None, description="White where to inpaint.")
    denoising_strength: float = 0.75
    mask_blur: int = Field(4, description="Radius of the Gaussian blur over the mask, pixels.")
    inpainting_mask_invert: int = Field(0, description="1: inpaint where the mask is black.")
    inpaint_full_res: bool = Field(
        True, description="Inpaint the masked area (and its padding) at the full output size."
    )
    inpaint_full_res_padding: int = 32


class A1111Response(BaseModel):
    images: list[str] | None = None
    parameters: dict[str, Any]
    info: str


def _models(request: Request) -> ModelSet:
    return request.app.state.models  # type: ignore[no-any-return]


def _asked_model(body: A1111Txt2Img) -> str | None:
    settings = body.model_extra.get("override_settings") if body.model_extra else None
    title = settings.get("sd_model_checkpoint") if isinstance(settings, dict) else None
    return checkpoint_name(title) if isinstance(title, str) else None


def _model_hash(manifest: Manifest) -> str:
    return manifest.source.content_hash.split(":")[-1]


def _model_title(name: str, manifest: Manifest) -> str:
    return f"{name} [{_model_hash(manifest)[:10]}]"


def _info(service: Service, body: A1111Txt2Img, job: Job, sampler: str) -> str:
    first = job.calls[0]
    seeds = job.result.seeds if job.result else [call.seed for call in job.calls]
    count = len(seeds)
    info = {
        "prompt": body.prompt,
        "all_prompts": [body.prompt] * count,
        "negative_prompt": body.negative_prompt,
        "all_negative_prompts": [body.negative_prompt] * count,
        "seed": seeds[0],
        "all_seeds": seeds,
        "subseed": body.subseed,
        "all_subseeds": [body.subseed] * count,
        "subseed_strength": 0,
        "width": first.width,
        "height": first.height,
        "sampler_name": sampler,
        "cfg_scale": body.cfg_scale,
        "steps": body.steps,
        "batch_size": body.batch_size,
        "restore_faces": False,
        "face_restoration_model": None,
        "sd_model_name": service.manifest.model.name,
        "sd_model_hash": _model_hash(service.manifest)[:10],
        "sd_vae_name": None,
        "sd_vae_hash": None,
        "seed_resize_from_w": -1,
        "seed_resize_from_h": -1,
        "denoising_strength": getattr(body, "denoising_strength", None),
        "extra_generation_params": {"Schedule type": body.scheduler or "Automatic"},
        "index_of_first_image": 0,
        "infotexts": job.result.infotexts if job.result else [],
        "styles": body.styles or [],
        "job_timestamp": time.strftime("%Y%m%d%H%M%S"),
        "clip_skip": 1,
        "is_using_inpainting_conditioning": False,
        "version": f"sdtrt {__version__}",
    }
    return json.dumps(info)


@a1111_router.post("/txt2img")
async def txt2img(body: A1111Txt2Img, request: Request) -> Any:
    """A1111's txt2img: `seed` -1 is random; image i is seeded `seed + i`, as in A1111."""
    return await _generate(request, body, None)


@a1111_router.post("/img2img")
async def img2img(body: A1111Img2Img, request: Request) -> Any:
    """A1111's img2img: image to image, or inpainting with `mask`; seeds as for txt2img."""
    return await _generate(request, body, _image_task(body))


def _image_task(body: A1111Img2Img) -> ImageTask:
    if not body.init_images:
        raise InputError("init_images must hold the image to start from")
    image = image_from_base64(body.init_images[0], "init_images[0]")
    mask = None
    if body.mask is not None:
        mask = image_from_base64(body.mask, "mask").convert("L")
        if body.inpainting_mask_invert:
            mask = ImageOps.invert(mask)
        if body.mask_blur > 0:
            mask = mask.filter(ImageFilter.GaussianBlur(body.mask_blur))
    full_res = mask is not None and body.inpaint_full_res
    return ImageTask(
        image=image,
        mask=mask,
        strength=body.denoising_strength,
        padding_mask_crop=max(0, body.inpaint_full_res_padding) if full_res else None,
    )


async def _generate(request: Request, body: A1111Txt2Img, task: ImageTask | None) -> Any:
    service = await service_for(request, _asked_model(body))
    options = request.app.state.options
    check_limits(options, body.prompt, body.negative_prompt, body.steps)
    count = body.batch_size * body.n_iter
    if body.batch_size < 1 or body.n_iter < 1 or count > options.max_images:
        raise InputError(
            f"batch_size x n_iter must be 1 to {options.max_images} images, "
            f"got {body.batch_size} x {body.n_iter}"
        )
    sampler = body.sampler_name or body.sampler_index
    prompt, weights = take_tags(body.prompt)
    family = family_of(service.manifest.model)
    params = GenerationParams(
        prompt=prompt,
        negative_prompt=body.negative_prompt,
        steps=body.steps,
        guidance=body.cfg_scale,
        seed=None if body.seed == -1 else body.seed,
        height=body.height,
        width=body.width,
        scheduler=scheduler_for(family, sampler, body.scheduler),
        images=count,
        per_image_seeds=True,
        task=task,
        loras=request.app.state.loras.sources(weights),
        prompt_syntax=prompt_syntax_for(family, prompt, body.negative_prompt),
        control=a1111_controls(body.model_extra),
    )
    refiner = body.refiner_checkpoint
    if refiner and refiner != "None":  # A1111's web UI sends "None" for no refiner
        switch_at = body.refiner_switch_at
        service, job = await refined(request, service, params, checkpoint_name(refiner), switch_at)
    else:
        job = service.submit(params, owner=owner_of(request))
        await wait_or_cancel(request, service, job)
    if job.state not in (JobState.SUCCEEDED, JobState.CANCELLED):
        answer: Any = failure_response(job)
    else:
        # An interrupted job answers 200 with the images it finished (none here), as A1111 does.
        pngs = job.result.pngs if job.result and body.send_images else []
        answer = A1111Response(
            images=[base64.b64encode(png).decode("ascii") for png in pngs],
            # The images are not echoed back, as A1111 does without include_init_images.
            parameters=body.model_dump() | ({"init_images": None, "mask": None} if task else {}),
            info=_info(service, body, job, sampler),
        )
    service.forget(job)
    return answer


@a1111_router.get("/samplers")
def samplers() -> list[dict[str, Any]]:
    return [
        {"name": name, "aliases": aliases, "options": {}} for name, (_, aliases) in SAMPLERS.items()
    ]


@a1111_router.get("/schedulers")
def schedulers() -> list[dict[str, Any]]:
    return [{**kind, "aliases": None, "need_inner_model": False} for kind in SCHEDULE_TYPES]


@a1111_router.get("/sd-models")
def sd_models(request: Request) -> list[dict[str, Any]]:
    """Every model this server serves (file names are its folders', not paths)."""
    models = _models(request)
    listed = []
    for name in models.names:
        manifest = models.manifest(name)
        listed.append(
            {
                "title": _model_title(name, manifest),
                "model_name": name,
                "hash": _model_hash(manifest)[:10],
                "sha256": _model_hash(manifest),
                "filename": models.models[name].directory.name,
                "config": None,
            }
        )
    return listed


@a1111_router.get("/options")
def get_options(request: Request) -> dict[str, Any]:
    models = _models(request)
    manifest = models.manifest(None)
    return {
        "sd_model_checkpoint": _model_title(models.default, manifest),
        "sd_checkpoint_hash": _model_hash(manifest),
        "samples_format": "png",
        "CLIP_stop_at_last_layers": 1,
        "eta_noise_seed_delta": 0,
        "sd_vae": "Automatic",
    }


@a1111_router.post("/options")
def set_options(settings: dict[str, Any], request: Request) -> None:
    """`sd_model_checkpoint` chooses the model A1111 requests draw with unless they say
    otherwise (as in A1111, for every client); the other settings are accepted and ignored."""
    wanted = settings.get("sd_model_checkpoint")
    if wanted is not None:
        models = _models(request)
        models.default = models.name_of(checkpoint_name(str(wanted)))


@a1111_router.get("/progress")
def progress(request: Request) -> dict[str, Any]:
    """The caller's latest unfinished job (A1111 reports its single global job)."""
    owner = owner_of(request)
    jobs = [
        job
        for service in _models(request).started()
        for job in service.jobs_of(owner)
        if not job.state.finished
    ]
    job = jobs[-1] if jobs else None
    fraction, eta = 0.0, 0.0
    if job is not None and job.started is not None and job.step > 0:
        fraction = job.step / max(1, job.total_steps)
        elapsed = time.monotonic() - job.started
        eta = elapsed / fraction - elapsed
    state = {
        "skipped": False,
        "interrupted": bool(job and job.cancel_requested.is_set()),
        "stopping_generation": False,
        "job": f"task({job.id})" if job else "",
        "job_count": len(jobs),
        "job_timestamp": time.strftime("%Y%m%d%H%M%S"),
        "job_no": 0,
        "sampling_step": job.step if job else 0,
        "sampling_steps": job.total_steps if job else 0,
    }
    return {
        "progress": fraction,
        "eta_relative": eta,
        "state": state,
        "current_image": None,
        "textinfo": None,
    }


@a1111_router.get("/loras")
def loras(request: Request) -> list[dict[str, Any]]:
    """The LoRAs of --lora-dir, for `<lora:NAME:WEIGHT>` in prompts."""
    files = request.app.state.loras.files
    return [
        {"name": name, "alias": name, "path": str(path), "metadata": {}}
        for name, path in files.items()
    ]


@a1111_router.post("/refresh-loras")
def refresh_loras(request: Request) -> None:
    """Read --lora-dir again (new files become usable by name)."""
    request.app.state.loras.refresh()


@a1111_router.get("/scripts")
def scripts() -> dict[str, list[str]]:
    return {"txt2img": [], "img2img": []}


@a1111_router.post("/interrupt")
def interrupt(request: Request) -> dict[str, Any]:
    """Stop the caller's own queued and running jobs; other clients' jobs go on."""
    for service in _models(request).started():
        for job in service.jobs_of(owner_of(request)):
            if not job.state.finished:
                service.cancel(job.id)
    return {}
