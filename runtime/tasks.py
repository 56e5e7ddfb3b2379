"""What text-to-image, image-to-image and inpainting do differently around one denoising loop.

A task says where the loop starts and with which latents, what the UNet gets beside the latents
(a 9-channel inpainting UNet: the mask and the masked image's latents), and how the latents are
blended after each step (an ordinary 4-channel model inpainting: the known region is put back,
noised to the next step's level). Everything random is drawn when the task is made, in the
order diffusers' pipelines draw it, so a seed gives diffusers' image.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from sdtrt.engine.base import Engine
from sdtrt.engine.manifest import ModelInfo
from sdtrt.errors import InputError
from sdtrt.runtime.noise import NoiseSource
from sdtrt.runtime.schedulers import Scheduler


@dataclass(frozen=True)
class LoopStart:
    plan: Any
    begin: int  # index of the first model call in the plan
    latents: np.ndarray


class Task:
    """Text to image: the loop starts at the first call, from noise scaled to the first sigma."""

    name = "txt2img"
    unet_extra: np.ndarray | None = None  # (batch, k, h, w) channels after the latents
    strength: float | None = None  # how much of an input image is repainted

    def __init__(self, latents: np.ndarray) -> None:
        self.latents = latents

    def start(self, scheduler: Scheduler[Any, Any], plan: Any) -> LoopStart:
        return LoopStart(plan, 0, self.latents * np.float32(scheduler.init_noise_sigma(plan)))

    def blend(
        self, latents: np.ndarray, scheduler: Scheduler[Any, Any], plan: Any, i: int
    ) -> np.ndarray:
        """The latents after call `i`'s step, as the next call should see them."""
        return latents


def skipped_steps(steps: int, strength: float) -> int:
    """Steps that strength leaves out: diffusers' `t_start` in `get_timesteps`."""
    return max(steps - min(int(steps * strength), steps), 0)


def check_strength(strength: float, steps: int) -> None:
    if (
        isinstance(strength, bool)
        or not isinstance(strength, (int, float))
        or not 0 < strength <= 1
    ):
        raise InputError(f"strength must be a number in (0, 1], got {strength}")
    if steps - skipped_steps(steps, strength) < 1:
        raise InputError(
            f"strength {strength} with {steps} steps leaves no step to run "
            f"(int(steps x strength) = 0); raise the strength or the steps"
        )


class ImageToImage(Task):
    """Image to image: the image's latents noised to the level of the first call kept."""

    name = "img2img"

    def __init__(
        self, image_latents: np.ndarray, noise: np.ndarray, strength: float, steps: int
    ) -> None:
        super().__init__(noise)
        self.image_latents = image_latents
        self.noise = noise
        self.strength = strength
        self.skipped = skipped_steps(steps, strength)

    def start(self, scheduler: Scheduler[Any, Any], plan: Any) -> LoopStart:
        plan, begin = scheduler.start_at(plan, self.skipped)
        return LoopStart(
            plan, begin, scheduler.add_noise(self.image_latents, self.noise, begin, plan)
        )


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
        steps: int,
        image_latents: np.ndarray | None,
        masked_latents: np.ndarray | None,
        from_noise: bool,
    ) -> None:
        super().__init__(noise)
        self.noise = noise
        self.mask = mask  # (batch, 1, h, w): 1 where the image is repainted
        self.strength = strength
        self.skipped = skipped_steps(steps, strength)
        self.image_latents = image_latents  # needed to start from the image, or to blend
        self.from_noise = from_noise  # strength 1 or latents given: start from noise alone
        if masked_latents is not None:
            self.unet_extra = np.concatenate([mask, masked_latents], axis=1).astype(np.float32)

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
        if self.unet_extra is not None or self.image_latents is None:
            return latents
        known = self.image_latents
        if i + 1 < len(scheduler.timesteps(plan)):
            known = scheduler.add_noise(known, self.noise, i + 1, plan)
        keep = np.float32(1) - self.mask
        return (keep * known + self.mask * latents).astype(np.float32, copy=False)


def encode_image(
    encoder: Engine, pixels: np.ndarray, model: ModelInfo, source: NoiseSource
) -> np.ndarray:
    """VAE latents of `pixels` (1, 3, H, W): a sample of the encoder's diagonal Gaussian drawn
    from `source` (diffusers' `latent_dist.sample(generator)`), times the scaling factor."""
    moments = encoder.infer({"image": pixels})["latent_moments"]
    mean, log_variance = np.split(moments, 2, axis=1)
    std = np.exp(np.float32(0.5) * np.clip(log_variance, -30.0, 20.0))
    sample = mean + std * source.randn(mean.shape)
    latents = sample * np.float32(model.vae_scaling_factor)
    return latents.astype(np.float32, copy=False)


def repeat_to(array: np.ndarray, batch: int) -> np.ndarray:
    return np.ascontiguousarray(np.repeat(array, batch // array.shape[0], axis=0))
