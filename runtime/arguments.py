"""Turning a pipeline call's arguments into a checked request, before any engine runs."""

from __future__ import annotations

import math
import secrets
from collections.abc import Sequence
from dataclasses import replace

from sdtrt.engine.manifest import Manifest
from sdtrt.engine.ranges import check_batch, check_image_size
from sdtrt.errors import InputError
from sdtrt.runtime.families import family_of
from sdtrt.runtime.noise import NOISE_KINDS
from sdtrt.runtime.prompt_syntax import PROMPT_SYNTAXES
from sdtrt.runtime.request import Request, SizeConditioning
from sdtrt.runtime.schedulers import SCHEDULERS, resolve_scheduler_name, scheduler_names
from sdtrt.runtime.skip_guidance import SkipLayers
from sdtrt.runtime.vae import check_vae

# Seeds a user types may be any 64-bit number; random ones are drawn from 32 bits, as the A1111 web
# UI and its clients draw them, so that every client (JavaScript's numbers stop being exact at
# 2**53) shows and sends them back exactly.
RANDOM_SEED_BITS = 32
MAX_SEED = 2**64 - 1


def random_seed() -> int:
    return secrets.randbits(RANDOM_SEED_BITS)


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
    except InputError as error:
        raise InputError(
            f"the model's own scheduler, {default}, is not available here; choose one with "
            f"--scheduler (one of: {', '.join(scheduler_names())})"
        ) from error


def make_request(
    manifest: Manifest,
    default_scheduler: str,
    prompt: str | Sequence[str],
    negative_prompt: str | Sequence[str] | None,
    height: int | None,
    width: int | None,
    num_inference_steps: int | None,
    guidance_scale: float | None,
    seed: int | None,
    scheduler: str | None,
    num_images_per_prompt: int,
    noise: str = "torch",
    *,
    prompt_syntax: str = "diffusers",
    clip_skip: int | None = None,
    prompt_2: str | Sequence[str] | None = None,
    negative_prompt_2: str | Sequence[str] | None = None,
    sizes: SizeConditioning | None = None,
    task: str = "txt2img",
    controlled: bool = False,
    prompt_3: str | Sequence[str] | None = None,
    negative_prompt_3: str | Sequence[str] | None = None,
    max_sequence_length: int | None = None,
    skip_layers: SkipLayers | None = None,
    vae: str = "full",
) -> Request:
    """`task`: "txt2img", "img2img" or "inpaint", and `controlled` (with ControlNets), for the
    defaults diffusers' pipeline for it has; `vae`: "full", or "tiny" where the engines have a
    tiny VAE (runtime/vae.py)."""
    prompts = _as_prompts(prompt, "prompt")
    negatives = _negatives(negative_prompt, len(prompts), "negative_prompt")
    model = manifest.model
    family = family_of(model)
    family.check_arguments(
        model,
        {
            "prompt_2": prompt_2,
            "negative_prompt_2": negative_prompt_2,
            "sizes": sizes,
            "prompt_3": prompt_3,
            "negative_prompt_3": negative_prompt_3,
            "max_sequence_length": max_sequence_length,
            "skip_guidance_layers": skip_layers,
            "prompt_syntax": None if prompt_syntax == "diffusers" else prompt_syntax,
        },
    )
    prompts_2 = _per_prompt(prompt_2, len(prompts), "prompt_2")
    prompts_3 = _per_prompt(prompt_3, len(prompts), "prompt_3")
    negatives_2 = (
        None
        if negative_prompt_2 is None
        else _negatives(negative_prompt_2, len(prompts), "negative_prompt_2")
    )
    negatives_3 = (
        None
        if negative_prompt_3 is None
        else _negatives(negative_prompt_3, len(prompts), "negative_prompt_3")
    )
    if num_inference_steps is None:
        num_inference_steps = family.default_steps(model, task)
    if guidance_scale is None:
        guidance_scale = family.default_guidance(model, task, controlled)
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
    if noise not in NOISE_KINDS:
        raise InputError(f"unknown noise source '{noise}'; choose one of: {', '.join(NOISE_KINDS)}")
    if seed is not None and not 0 <= seed <= MAX_SEED:
        raise InputError(f"seed must be between 0 and 2**64 - 1, got {seed}")
    if prompt_syntax not in PROMPT_SYNTAXES:
        raise InputError(
            f"unknown prompt syntax '{prompt_syntax}'; choose one of: {', '.join(PROMPT_SYNTAXES)}"
        )
    if clip_skip is not None and (
        isinstance(clip_skip, bool) or not isinstance(clip_skip, int) or clip_skip < 0
    ):
        raise InputError(f"clip skip must be a whole number of at least 0, got {clip_skip}")
    if skip_layers is not None:
        skip_layers.check(model.transformer_layers)
        if task != "txt2img":
            raise InputError(
                "skip-layer guidance is for text to image, where diffusers' SD 3 pipeline has it"
            )
    chosen = _scheduler(scheduler, default_scheduler)
    if SCHEDULERS[chosen].cls.flow_matching != family.flow_matching:
        kind = "flow-matching" if family.flow_matching else "noise-predicting"
        names = [
            n for n in scheduler_names() if SCHEDULERS[n].cls.flow_matching == family.flow_matching
        ]
        raise InputError(
            f"{chosen} does not sample this {model.family} model, which takes {kind} "
            f"schedulers: {', '.join(names)}"
        )
    request = Request(
        prompts=prompts,
        negative_prompts=negatives,
        height=height,
        width=width,
        steps=num_inference_steps,
        guidance_scale=float(guidance_scale),
        images_per_prompt=num_images_per_prompt,
        scheduler=chosen,
        seed=random_seed() if seed is None else int(seed),
        noise=noise,  # type: ignore[arg-type]
        prompt_syntax=prompt_syntax,  # type: ignore[arg-type]
        clip_skip=clip_skip,
        prompts_2=prompts_2,
        negative_prompts_2=negatives_2,
        prompts_3=prompts_3,
        negative_prompts_3=negatives_3,
        max_sequence_length=_sequence_length(max_sequence_length, model.max_sequence_length),
        skip_layers=skip_layers,
        zero_negatives=model.force_zeros_for_empty_prompt and negative_prompt is None,
        sizes=_check_sizes(sizes or SizeConditioning()),
        guidance_embedded=model.guidance_embedding_dim is not None,
        vae=check_vae(vae, manifest),
    )
    check_batch(manifest.ranges, request.batch, request.guided)
    return request


def _per_prompt(value: str | Sequence[str] | None, prompts: int, what: str) -> list[str] | None:
    """A second or third encoder's prompts, one per prompt (one given serves all)."""
    if value is None:
        return None
    given = _as_prompts(value, what)
    if len(given) == prompts:
        return given
    if len(given) != 1:
        raise InputError(f"got {len(given)} {what} for {prompts} prompts; give one per prompt")
    return given * prompts


# T5's length when a call gives none: diffusers' SD 3 pipelines' default.
DEFAULT_SEQUENCE_LENGTH = 256


def _sequence_length(asked: int | None, most: int | None) -> int:
    if asked is None or most is None:
        return DEFAULT_SEQUENCE_LENGTH
    if isinstance(asked, bool) or not isinstance(asked, int) or not 1 <= asked <= most:
        raise InputError(
            f"max_sequence_length must be a whole number from 1 to {most}, got {asked!r}"
        )
    return asked


def _negatives(value: str | Sequence[str] | None, prompts: int, what: str) -> list[str]:
    if value is None:
        return [""] * prompts
    if isinstance(value, str):
        return [value] * prompts
    negatives = _as_prompts(value, what)
    if len(negatives) != prompts:
        raise InputError(
            f"got {len(negatives)} {what.replace('_', ' ')}s for {prompts} prompts; "
            "give one per prompt or a single string"
        )
    return negatives


def _check_sizes(sizes: SizeConditioning) -> SizeConditioning:
    """The conditioning with its pairs as tuples (callers may pass lists), or one InputError."""
    pairs: dict[str, tuple[int, int] | None] = {}
    for name in ("original_size", "crops_coords_top_left", "target_size"):
        pair = getattr(sizes, name)
        if pair is None:
            pairs[name] = None
            continue
        if (
            isinstance(pair, (str, bytes))
            or len(pair) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in pair)
            or min(pair) < 0
        ):
            raise InputError(f"{name} must be two whole numbers of at least 0, got {pair!r}")
        pairs[name] = (int(pair[0]), int(pair[1]))
    for name, score in (
        ("aesthetic_score", sizes.aesthetic_score),
        ("negative_aesthetic_score", sizes.negative_aesthetic_score),
    ):
        if not isinstance(score, (int, float)) or not math.isfinite(score):
            raise InputError(f"{name} must be a finite number, got {score!r}")
    return replace(sizes, **pairs)  # type: ignore[arg-type]
