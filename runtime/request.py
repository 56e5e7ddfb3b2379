"""Turning a pipeline call's arguments into a checked request, before any engine runs."""

from __future__ import annotations

import math
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

from sdtrt.engine.manifest import Manifest
from sdtrt.engine.ranges import check_batch, check_image_size
from sdtrt.errors import InputError
from sdtrt.runtime.noise import NOISE_KINDS, NoiseKind
from sdtrt.runtime.prompt_syntax import PROMPT_SYNTAXES, PromptSyntax
from sdtrt.runtime.schedulers import resolve_scheduler_name, scheduler_names


@dataclass(frozen=True)
class Request:
    prompts: list[str]
    negative_prompts: list[str]
    height: int
    width: int
    steps: int
    guidance_scale: float
    images_per_prompt: int
    scheduler: str
    seed: int
    noise: NoiseKind
    prompt_syntax: PromptSyntax = "diffusers"
    clip_skip: int | None = None  # diffusers' meaning: layers skipped from the end

    @property
    def batch(self) -> int:
        return len(self.prompts) * self.images_per_prompt

    @property
    def guided(self) -> bool:
        """Classifier-free guidance runs only above 1, as in diffusers."""
        return self.guidance_scale > 1.0


def _as_prompts(value: str | Sequence[str], what: str) -> list[str]:
    prompts = [value] if isinstance(value, str) else list(value)
    if not prompts:
        raise InputError(f"{what} must not be an empty list")
    if not all(isinstance(p, str) for p in prompts):
        raise InputError(f"{what} must be a string or a list of strings")
    return prompts


def _scheduler(asked: str | None, default: str) -> str:
    if asked is not None:
        return resolve_scheduler_name(asked)
    try:
        return resolve_scheduler_name(default)
    except InputError:
        raise InputError(
            f"the model's own scheduler, {default}, is not available here; choose one with "
            f"--scheduler (one of: {', '.join(scheduler_names())})"
        ) from None


def make_request(
    manifest: Manifest,
    default_scheduler: str,
    prompt: str | Sequence[str],
    negative_prompt: str | Sequence[str] | None,
    height: int | None,
    width: int | None,
    num_inference_steps: int,
    guidance_scale: float,
    seed: int | None,
    scheduler: str | None,
    num_images_per_prompt: int,
    noise: str = "torch",
    *,
    prompt_syntax: str = "diffusers",
    clip_skip: int | None = None,
) -> Request:
    prompts = _as_prompts(prompt, "prompt")
    if negative_prompt is None:
        negatives = [""] * len(prompts)
    elif isinstance(negative_prompt, str):
        negatives = [negative_prompt] * len(prompts)
    else:
        negatives = _as_prompts(negative_prompt, "negative_prompt")
        if len(negatives) != len(prompts):
            raise InputError(
                f"got {len(negatives)} negative prompts for {len(prompts)} prompts; "
                "give one per prompt or a single string"
            )
    native_height, native_width = manifest.model.native_size
    height = native_height if height is None else int(height)
    width = native_width if width is None else int(width)
    check_image_size(manifest.ranges, height, width)
    if not isinstance(num_inference_steps, int) or num_inference_steps < 1:
        raise InputError(f"steps must be a whole number of at least 1, got {num_inference_steps}")
    if not math.isfinite(guidance_scale):
        raise InputError(f"guidance must be a finite number, got {guidance_scale}")
    if num_images_per_prompt < 1:
        raise InputError(f"images per prompt must be at least 1, got {num_images_per_prompt}")
    check_batch(manifest.ranges, len(prompts) * num_images_per_prompt)
    if noise not in NOISE_KINDS:
        raise InputError(f"unknown noise source '{noise}'; choose one of: {', '.join(NOISE_KINDS)}")
    if seed is not None and not 0 <= seed < 2**64:
        raise InputError(f"seed must be between 0 and 2**64 - 1, got {seed}")
    if prompt_syntax not in PROMPT_SYNTAXES:
        raise InputError(
            f"unknown prompt syntax '{prompt_syntax}'; choose one of: {', '.join(PROMPT_SYNTAXES)}"
        )
    if clip_skip is not None and (
        isinstance(clip_skip, bool) or not isinstance(clip_skip, int) or clip_skip < 0
    ):
        raise InputError(f"clip skip must be a whole number of at least 0, got {clip_skip}")
    return Request(
        prompts=prompts,
        negative_prompts=negatives,
        height=height,
        width=width,
        steps=num_inference_steps,
        guidance_scale=float(guidance_scale),
        images_per_prompt=num_images_per_prompt,
        scheduler=_scheduler(scheduler, default_scheduler),
        seed=secrets.randbits(63) if seed is None else int(seed),
        noise=noise,  # type: ignore[arg-type]
        prompt_syntax=prompt_syntax,  # type: ignore[arg-type]
        clip_skip=clip_skip,
    )
