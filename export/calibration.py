"""The denoiser's inputs in real denoising runs, to calibrate int8 activations (w8a8) on.

Activation scales are only as good as the inputs they were measured on: random tensors have
neither the statistics of text encoder states nor those of latents on their way from noise to an
image. So diffusers' own pipeline for the model runs a few prompts at the build's optimum size,
and a hook on the UNet records every call's inputs under the exported UNet's input names.
The last prompt's calls are held out: the build validates the quantized UNet on one of them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from sdtrt.engine.doctor import installed_version
from sdtrt.engine.ranges import BuildRanges
from sdtrt.errors import InputError
from sdtrt.export.precision import W8A8_COMPONENTS

# Varied subjects, media and lighting, so that the text states span more than one kind of prompt.
PROMPTS = (
    "a photograph of an astronaut riding a horse on the moon",
    "a watercolor painting of a lighthouse on a cliff at dusk",
    "portrait of an old fisherman, oil on canvas, dramatic light",
    "a bowl of fruit on a wooden table, studio photograph",
    "a futuristic city street at night, neon signs, rain",
)
NEGATIVE_PROMPT = "blurry, low quality"
STEPS = 8  # per prompt: early, middle and late noise levels alike
RUNS_ON = ("nncf", "diffusers", "transformers", "torch")  # their releases are in the build key


def calibration_key() -> dict[str, object]:
    """What a w8a8 UNet depends on beyond the model: the runs it was calibrated on, and the
    releases of what ran them and of the quantizer (part of the build key, so that a change
    quantizes afresh)."""
    return {
        "prompts": PROMPTS,
        "negative": NEGATIVE_PROMPT,
        "steps": STEPS,
        "versions": {name: installed_version(name) for name in RUNS_ON},
    }


def at_batch(feeds: Mapping[str, np.ndarray], batch: int) -> dict[str, np.ndarray]:
    """`feeds` repeated along the batch axis to `batch` rows, where that is a whole number of
    repeats; unchanged otherwise."""
    rows = next(iter(feeds.values())).shape[0]
    if batch % rows:
        return dict(feeds)
    return {name: np.concatenate([value] * (batch // rows)) for name, value in feeds.items()}


@dataclass(frozen=True)
class CalibrationSet:
    """Recorded UNet inputs: `feeds` to calibrate on, `held_out` from a prompt they lack."""

    feeds: tuple[dict[str, np.ndarray], ...]
    held_out: tuple[dict[str, np.ndarray], ...]


def _array(value: Any) -> np.ndarray:
    return value.detach().float().numpy().copy()


def unet_feeds(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """One UNet2DConditionModel call's inputs as the exported UNet takes them."""
    names = ("sample", "timestep", "encoder_hidden_states")
    given = {**dict(zip(names, args, strict=False)), **kwargs}
    sample = _array(given["sample"])
    timestep = np.broadcast_to(_array(torch.as_tensor(given["timestep"])), sample.shape[:1])
    feeds = {
        "sample": sample,
        "timestep": np.ascontiguousarray(timestep, dtype=np.float32),
        "encoder_hidden_states": _array(given["encoder_hidden_states"]),
    }
    added = given.get("added_cond_kwargs") or {}
    for name in ("text_embeds", "time_ids"):
        if name in added:
            feeds[name] = _array(added[name])
    if given.get("timestep_cond") is not None:
        feeds["timestep_cond"] = _array(given["timestep_cond"])
    return feeds


def transformer_feeds(transformer: Any, kwargs: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """One SD3Transformer2DModel call's inputs (diffusers' pipelines pass them by name) as the
    exported transformer takes them, every layer run."""
    sample = _array(kwargs["hidden_states"])
    timestep = np.broadcast_to(_array(torch.as_tensor(kwargs["timestep"])), sample.shape[:1])
    return {
        "sample": sample,
        "timestep": np.ascontiguousarray(timestep, dtype=np.float32),
        "encoder_hidden_states": _array(kwargs["encoder_hidden_states"]),
        "pooled_projections": _array(kwargs["pooled_projections"]),
        "layer_mask": np.ones(int(transformer.config.num_layers), np.float32),
    }


def record_unet_calls(
    unet: torch.nn.Module, pipeline: Any, ranges: BuildRanges, prompts: tuple[str, ...], steps: int
) -> list[list[dict[str, np.ndarray]]]:
    """Per prompt, the inputs of every UNet call `pipeline` makes for it at the build's optimum
    size (one image, diffusers' default guidance, a fixed seed per prompt)."""
    runs = [{"prompt": prompt, "negative_prompt": NEGATIVE_PROMPT} for prompt in prompts]
    return _record(unet, pipeline, ranges, runs, steps)


def _record(
    unet: torch.nn.Module,
    pipeline: Any,
    ranges: BuildRanges,
    runs: Sequence[Mapping[str, Any]],
    steps: int,
) -> list[list[dict[str, np.ndarray]]]:
    """Per run (the pipeline's prompt arguments), the inputs of every UNet call it makes."""
    calls: list[dict[str, np.ndarray]] = []

    def record(module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if "pooled_projections" in kwargs:  # SD 3's transformer
            calls.append(transformer_feeds(module, kwargs))
        else:
            calls.append(unet_feeds(args, kwargs))

    height, width = ranges.size.opt
    pipeline.set_progress_bar_config(disable=True)
    recorded = []
    handle = unet.register_forward_pre_hook(record, with_kwargs=True)
    try:
        with torch.no_grad():
            for seed, arguments in enumerate(runs):
                pipeline(
                    **arguments,
                    height=height,
                    width=width,
                    num_inference_steps=steps,
                    generator=torch.Generator("cpu").manual_seed(seed),
                    output_type="latent",
                )
                recorded.append(list(calls))
                calls.clear()
    finally:
        handle.remove()
    return recorded


def check_calibratable(makes_images_from_text: bool, denoiser: str = "unet") -> None:
    """InputError, in one line, for a model without a text-to-image pipeline, or whose
    denoiser w8a8 does not quantize (export/precision.py)."""
    if denoiser not in W8A8_COMPONENTS:
        raise InputError(
            f"--precision w8a8 quantizes the denoisers {', '.join(W8A8_COMPONENTS)}; this "
            f"model's {denoiser} is not calibrated yet: build it with --precision bf16 or int8"
        )
    if not makes_images_from_text:
        raise InputError(
            "--precision w8a8 calibrates on text-to-image runs, which this model cannot make "
            "(an SDXL refiner or an inpainting UNet); build it with --precision bf16 or int8"
        )


def calibration_set(
    pipeline: Any,
    unet: torch.nn.Module,
    ranges: BuildRanges,
    encode: Callable[[str, str], dict[str, Any]],
    release: Callable[[], None],
) -> CalibrationSet:
    """Every call of the first prompts to calibrate on, the last prompt's calls held out. Every
    prompt is encoded first (`encode`: the pipeline's arguments for a prompt and its negative
    one), then `release` lets the text encoders go: the UNet runs with the memory they held
    (SDXL's: 3.1 GiB)."""
    with torch.no_grad():
        arguments = [encode(prompt, NEGATIVE_PROMPT) for prompt in PROMPTS]
    release()
    runs = _record(unet, pipeline, ranges, arguments, STEPS)
    return CalibrationSet(
        feeds=tuple(feed for run in runs[:-1] for feed in run), held_out=tuple(runs[-1])
    )
