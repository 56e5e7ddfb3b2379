"""Which VAE a call decodes (and encodes) with: the model's own, or the tiny VAE built beside it
with `sdtrt build --tiny-vae` (`vae="tiny"`, `sdtrt run --vae tiny`), and the latent scaling
each was trained with, applied as diffusers applies it to whichever VAE its pipeline holds."""

from __future__ import annotations

from typing import Literal

import numpy as np

from sdtrt.engine.base import Engine
from sdtrt.engine.manifest import Manifest, ModelInfo
from sdtrt.errors import InputError
from sdtrt.runtime.noise import NoiseSource

VaeChoice = Literal["full", "tiny"]
VAE_CHOICES: tuple[VaeChoice, ...] = ("full", "tiny")
DECODERS: dict[VaeChoice, str] = {"full": "vae_decoder", "tiny": "tiny_vae_decoder"}
ENCODERS: dict[VaeChoice, str] = {"full": "vae_encoder", "tiny": "tiny_vae_encoder"}


def check_vae(choice: str, manifest: Manifest) -> VaeChoice:
    """`choice` where the engine directory has that VAE; InputError in one line otherwise."""
    if choice not in VAE_CHOICES:
        raise InputError(f"unknown VAE '{choice}'; choose one of: {', '.join(VAE_CHOICES)}")
    if choice == "tiny" and DECODERS["tiny"] not in manifest.components:
        raise InputError(
            "these engines have no tiny VAE; build one beside the model's with `sdtrt build "
            "MODEL --tiny-vae FOLDER` (an AutoencoderTiny: TAESD, TAESDXL, TAESD3)"
        )
    return "tiny" if choice == "tiny" else "full"


def _scaling(model: ModelInfo, choice: VaeChoice) -> tuple[np.float32, np.float32 | None]:
    """The VAE's scaling factor, and its shift where the family's pipeline shifts latents
    (SD 3's, by the VAE it holds: the tiny one's own shift, 0 by default)."""
    scale, shift = model.vae_scaling_factor, model.vae_shift_factor
    if choice == "tiny" and model.tiny_vae is not None:
        scale = model.tiny_vae.scaling_factor
        if shift is not None:
            shift = model.tiny_vae.shift_factor or 0.0
    return np.float32(scale), None if shift is None else np.float32(shift)


def decoder_latents(latents: np.ndarray, model: ModelInfo, choice: VaeChoice) -> np.ndarray:
    """The denoised latents as the decoder takes them: divided by the scaling factor, plus the
    shift."""
    scale, shift = _scaling(model, choice)
    latents = latents / scale
    return latents if shift is None else latents + shift


def encode_image(
    encoder: Engine,
    pixels: np.ndarray,
    model: ModelInfo,
    source: NoiseSource,
    choice: VaeChoice = "full",
) -> np.ndarray:
    """VAE latents of `pixels` (1, 3, H, W), less the shift factor where the VAE has one, times
    the scaling factor. The full VAE's are a sample of its diagonal Gaussian drawn from `source`
    (diffusers' `latent_dist.sample(generator)`); the tiny VAE's are its output, and draw
    nothing (diffusers' `retrieve_latents` takes `.latents`)."""
    if choice == "tiny":
        sample = encoder.infer({"image": pixels})["latents"]
    else:
        moments = encoder.infer({"image": pixels})["latent_moments"]
        mean, log_variance = np.split(moments, 2, axis=1)
        std = np.exp(np.float32(0.5) * np.clip(log_variance, -30.0, 20.0))
        sample = mean + std * source.randn(mean.shape)
    scale, shift = _scaling(model, choice)
    if shift is not None:  # SD 3's VAE centres its latents
        sample = sample - shift
    return (sample * scale).astype(np.float32, copy=False)
