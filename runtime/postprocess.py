"""Decoded images to arrays, PIL images and PNG files that remember how they were made."""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from sdtrt.runtime.request import Controls, Request


def postprocess(decoded: np.ndarray) -> np.ndarray:
    """VAE output (N, 3, H, W) in [-1, 1] to (N, H, W, 3) float32 in [0, 1], as diffusers does."""
    return np.clip(decoded / 2 + 0.5, 0, 1).transpose(0, 2, 3, 1).astype(np.float32, copy=False)


def to_pil(images: np.ndarray) -> list[Image.Image]:
    pixels = (images * 255).round().astype(np.uint8)
    return [Image.fromarray(p) for p in pixels]


def generation_settings(
    request: Request,
    model: str,
    index: int,
    *,
    loras: str = "",
    strength: float | None = None,
    controls: Controls | None = None,
) -> dict[str, object]:
    """The settings of image `index` of a pipeline call, under the A1111 web UI's keys (its
    ControlNet extension's for `controls`); `loras`, `strength` (image to image) and
    `controls` where the call had them."""
    settings: dict[str, object] = {
        "Steps": request.steps,
        "Sampler": request.scheduler,
        "CFG scale": request.guidance_scale,
        "Seed": request.seed,
        "Size": f"{request.width}x{request.height}",
        "Model": model,
    }
    if loras:
        settings["LoRA"] = loras
    if request.noise != "torch":
        settings["Noise"] = request.noise
    if request.clip_skip:
        # The web UI counts the last layer as 1: its "Clip skip: 2" skips one.
        settings["Clip skip"] = request.clip_skip + 1
    if strength is not None:
        settings["Denoising strength"] = strength
    if request.vae != "full":  # the web UI's key for the VAE an image was decoded with
        settings["VAE"] = request.vae
    if controls is not None:
        settings.update(_control_settings(controls))
    if request.batch > 1:
        settings["Batch pos"] = index
    return settings


def _control_settings(controls: Controls) -> dict[str, str]:
    """Each ControlNet of a call as the A1111 web UI's ControlNet extension writes its units."""
    settings = {}
    for number, unit in enumerate(controls.units):
        described = {
            "Model": unit.name,
            "Weight": unit.scale,
            "Guidance Start": unit.start,
            "Guidance End": unit.end,
            "Guess Mode": controls.guess_mode,
        }
        text = ", ".join(f"{key}: {value}" for key, value in described.items())
        settings[f"ControlNet {number}"] = f'"{text}"'
    return settings


def parameters_text(prompt: str, negative_prompt: str, settings: Mapping[str, object]) -> str:
    """Generation settings in the `parameters` layout most image tools read and write."""
    lines = [prompt]
    if negative_prompt:
        lines.append(f"Negative prompt: {negative_prompt}")
    lines.append(", ".join(f"{key}: {value}" for key, value in settings.items()))
    return "\n".join(lines)


def save_png(image: Image.Image, path: Path, parameters: str) -> None:
    """Write `path` whole or not at all, with `parameters` in its text chunk."""
    info = PngInfo()
    info.add_text("parameters", parameters)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Opened by name rather than with mkstemp so the file gets the usual umask permissions.
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        with open(temporary, "xb") as handle:
            image.save(handle, format="PNG", pnginfo=info)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
