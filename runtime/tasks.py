"""What text-to-image, image-to-image and inpainting do differently around one denoising loop.

A task says where the loop starts and with which latents, what the denoiser gets beside the
latents (a 9-channel inpainting UNet: the mask and the masked image's latents), and how the
latents are blended after each step (an ordinary 4-channel model inpainting: the known region is
put back, noised to the next step's level). Everything random is drawn when the task is made, in the
order diffusers' pipelines draw it, so a seed gives diffusers' image.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from sdtrt.errors import InputError
from sdtrt.runtime.schedulers import Scheduler


@dataclass(frozen=True)
class LoopStart:
    plan: Any
    begin: int  # index of the first model call in the plan
    latents: np.ndarray


class Task:
    """Text to image: the loop starts at the first call, from noise scaled to the first sigma."""

    name = "txt2img"
    denoiser_extra: np.ndarray | None = None  # (batch, k, h, w) channels after the latents
    strength: float | None = None  # how much of an input image is repainted
    # What becomes of each output image (inpainting a crop: pasted back into the input image).
    finish: Callable[[Image.Image], Image.Image] | None = None

    def __init__(self, latents: np.ndarray) -> None:
        self.latents = latents

    def start(self, scheduler: Scheduler[Any, Any], plan: Any) -> LoopStart:
        return LoopStart(plan, 0, self.latents * np.float32(scheduler.init_noise_sigma(plan)))

    def blend(
        self, latents: np.ndarray, scheduler: Scheduler[Any, Any], plan: Any, i: int
    ) -> np.ndarray:
        """The latents after call `i`'s step, as the next call should see them."""
        return latents


def check_strength(strength: float, steps: int, skipped_steps: Callable[[int, float], int]) -> None:
    """`skipped_steps`: the family's count of the steps a strength leaves out."""
    if (
        isinstance(strength, bool)
        or not isinstance(strength, (int, float))
        or not 0 < strength <= 1
    ):
        raise InputError(f"strength must be a number in (0, 1], got {strength}")
    if steps - skipped_steps(steps, strength) < 1:
        raise InputError(
            f"strength {strength} with {steps} steps leaves no step to run; raise the strength "
            "or the steps"
        )


def cutoff_timestep(fraction: float, scheduler: Scheduler[Any, Any]) -> int:
    """The timestep at `fraction` of the denoising (SDXL's denoising_start / denoising_end),
    as diffusers rounds it."""
    train_steps = int(scheduler.config.get("num_train_timesteps", 1000))
    return int(round(train_steps - fraction * train_steps))


def check_fraction(value: float | None, name: str) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
        raise InputError(f"{name} must be a number between 0 and 1 (exclusive), got {value!r}")


class ImageToImage(Task):
    """Image to image: the image's latents noised to the level of the first call kept; or, from
    `denoising_start` on (an SDXL refiner taking over from a base model's latents), the latents
    as given, from the first call below that fraction of the schedule."""

    name = "img2img"

    def __init__(
        self,
        image_latents: np.ndarray,
        noise: np.ndarray | None,
        strength: float,
        skipped: int,
        denoising_start: float | None = None,
    ) -> None:
        """`skipped`: the steps `strength` leaves out (the family's `skipped_steps`)."""
        super().__init__(image_latents if noise is None else noise)
        self.image_latents = image_latents
        self.noise = noise
        self.strength = None if denoising_start is not None else strength
        self.skipped = skipped
        self.denoising_start = denoising_start

    def start(self, scheduler: Scheduler[Any, Any], plan: Any) -> LoopStart:
        if self.denoising_start is None:
            plan, begin = scheduler.start_at(plan, self.skipped)
            assert self.noise is not None
            latents = scheduler.add_noise(self.image_latents, self.noise, begin, plan)
            return LoopStart(plan, begin, latents)
        timesteps = scheduler.timesteps(plan)
        calls = int((timesteps < cutoff_timestep(self.denoising_start, scheduler)).sum())
        if scheduler.order == 2 and calls % 2 == 0:
            calls += 1  # a second-order step is never split between the two models
        if calls < 1 or calls > len(timesteps):
            raise InputError(
                f"denoising_start {self.denoising_start} leaves no step of {len(timesteps)} to "
                "run; lower it or raise the steps"
            )
        plan, begin = scheduler.start_at(plan, (len(timesteps) - calls) // scheduler.order)
        return LoopStart(plan, begin, self.image_latents)


class Inpaint(Task):
    """Inpainting, StableDiffusionInpaintPipeline's way for both kinds of UNet: a 9-channel one
    sees the mask and the masked image's latents; a 4-channel one gets the unmasked region
    put back after every step."""

    name = "inpaint"

    def __init__(
        self,
        noise: np.ndarray,
        mask: np.ndarray,
        strength: float,
        skipped: int,
        image_latents: np.ndarray | None,
        masked_latents: np.ndarray | None,
        from_noise: bool,
    ) -> None:
        super().__init__(noise)
        self.noise = noise
        self.mask = mask  # (batch, 1, h, w): 1 where the image is repainted
        self.strength = strength
        self.skipped = skipped
        self.image_latents = image_latents  # needed to start from the image, or to blend
        self.from_noise = from_noise  # strength 1 or latents given: start from noise alone
        if masked_latents is not None:
            self.denoiser_extra = np.concatenate([mask, masked_latents], axis=1).astype(np.float32)

    def start(self, scheduler: Scheduler[Any, Any], plan: Any) -> LoopStart:
        plan, begin = scheduler.start_at(plan, self.skipped)
        if self.from_noise:
            latents = self.noise * np.float32(scheduler.init_noise_sigma(plan))
        else:
            assert self.image_latents is not None
            latents = scheduler.add_noise(self.image_latents, self.noise, begin, plan)
        return LoopStart(plan, begin, latents)

    def blend(
        self, latents: np.ndarray, scheduler: Scheduler[Any, Any], plan: Any, i: int
    ) -> np.ndarray:
        if self.denoiser_extra is not None or self.image_latents is None:
            return latents
        known = self.image_latents
        if i + 1 < len(scheduler.timesteps(plan)):
            known = scheduler.add_noise(known, self.noise, i + 1, plan)
        keep = np.float32(1) - self.mask
        return (keep * known + self.mask * latents).astype(np.float32, copy=False)


def repeat_to(array: np.ndarray, batch: int) -> np.ndarray:
    return np.ascontiguousarray(np.repeat(array, batch // array.shape[0], axis=0))
