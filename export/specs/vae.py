"""The VAE's specs: the decoder (latents to an image) and the encoder (an image to the latent
distribution)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from sdtrt.engine.ranges import BuildRanges
from sdtrt.engine.tensors import TensorSpec
from sdtrt.export.specs.base import (
    ComponentSpec,
    DimRanges,
    Point,
    Wrapper,
    batch_dims,
    image_dims,
)


class _VaeSpec(ComponentSpec):
    """The VAE halves share their dims: images and latents one VAE factor apart, no guidance."""

    vae_scale_factor: int

    def dims(self, ranges: BuildRanges) -> DimRanges:
        return {"batch": batch_dims(ranges, 1), **image_dims(ranges, self.vae_scale_factor)}


class VaeDecoderSpec(_VaeSpec):
    """VAE decoder: scaled latents to an image in [-1, 1]."""

    name = "vae_decoder"

    def __init__(self, vae: Any, vae_scale_factor: int) -> None:
        self.vae = vae
        self.vae_scale_factor = vae_scale_factor
        config = vae.config
        self.inputs = (
            TensorSpec(
                name="latent",
                dtype="float32",
                shape=("batch", int(config.latent_channels), "latent_height", "latent_width"),
            ),
        )
        self.outputs = (
            TensorSpec(
                name="image",
                dtype="float32",
                shape=("batch", int(config.out_channels), "height", "width"),
            ),
        )

    def module(self) -> torch.nn.Module:
        return Wrapper(self.vae, lambda m, latent: m.decode(latent, return_dict=False)[0])

    def sample_inputs(self, point: Point, rng: np.random.Generator) -> dict[str, np.ndarray]:
        channels = int(self.inputs[0].shape[1])
        shape = (point["batch"], channels, point["latent_height"], point["latent_width"])
        # Latents as the decoder sees them: unit variance divided by the scaling factor.
        scale = float(self.vae.config.scaling_factor)
        return {"latent": rng.standard_normal(shape, dtype=np.float32) / np.float32(scale)}


class VaeEncoderSpec(_VaeSpec):
    """VAE encoder: an image in [-1, 1] to the latent distribution's mean and log-variance."""

    name = "vae_encoder"

    def __init__(self, vae: Any, vae_scale_factor: int) -> None:
        self.vae = vae
        self.vae_scale_factor = vae_scale_factor
        config = vae.config
        self.inputs = (
            TensorSpec(
                name="image",
                dtype="float32",
                shape=("batch", int(config.in_channels), "height", "width"),
            ),
        )
        moments = 2 * int(config.latent_channels)
        self.outputs = (
            TensorSpec(
                name="latent_moments",
                dtype="float32",
                shape=("batch", moments, "latent_height", "latent_width"),
            ),
        )

    def module(self) -> torch.nn.Module:
        return Wrapper(self.vae, lambda m, image: m.encode(image).latent_dist.parameters)

    def sample_inputs(self, point: Point, rng: np.random.Generator) -> dict[str, np.ndarray]:
        channels = int(self.inputs[0].shape[1])
        shape = (point["batch"], channels, point["height"], point["width"])
        return {"image": rng.uniform(-1.0, 1.0, size=shape).astype(np.float32)}


class TinyVaeDecoderSpec(VaeDecoderSpec):
    """A tiny VAE's decoder (AutoencoderTiny, export/tiny_vae.py): the same contract as the
    full decoder's, scaled latents in, an image in [-1, 1] out (not clamped, as diffusers')."""

    name = "tiny_vae_decoder"


class TinyVaeEncoderSpec(VaeEncoderSpec):
    """A tiny VAE's encoder: an image in [-1, 1] to its latents, unscaled (no distribution)."""

    name = "tiny_vae_encoder"

    def __init__(self, vae: Any, vae_scale_factor: int) -> None:
        super().__init__(vae, vae_scale_factor)
        channels = int(vae.config.latent_channels)
        self.outputs = (
            TensorSpec(
                name="latents",
                dtype="float32",
                shape=("batch", channels, "latent_height", "latent_width"),
            ),
        )

    def module(self) -> torch.nn.Module:
        return Wrapper(self.vae, lambda m, image: m.encode(image).latents)
