"""What every network's spec has: ONNX names, dynamic dims, profiles, sample inputs and the torch
wrapper.

The dims helpers here are what the networks share: image batches (doubled under guidance),
latent sizes one VAE factor below the image's, text lengths one prompt chunk each.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import numpy as np
import torch

from sdtrt.engine.ranges import BuildRanges
from sdtrt.engine.tensors import ComponentIO, ShapeRange, TensorSpec

DimRanges = dict[str, tuple[int, int, int]]  # symbol -> (min, opt, max)
Point = dict[str, int]  # symbol -> size


def batch_dims(ranges: BuildRanges, rows_per_image: int) -> tuple[int, int, int]:
    """(min, opt, max) rows for networks that see `rows_per_image` rows per image. The batch
    stays dynamic under --static (which fixes the image size): unguided calls and fewer images
    need fewer rows; the static build is tuned for its full batch."""
    most = rows_per_image * ranges.max_batch
    if ranges.fixed_shapes:
        return (most, most, most)
    return (1, most if ranges.static else rows_per_image, most)


def text_dims(ranges: BuildRanges, max_length: int) -> tuple[int, int, int]:
    """(min, opt, max) text states the UNet attends to: whole text-encoder outputs, one per
    prompt chunk (long prompts in the A1111 syntax), optimised for one."""
    return (max_length, max_length, max_length * ranges.max_prompt_chunks)


def latent_dims(ranges: BuildRanges, vae_scale_factor: int) -> DimRanges:
    (h0, w0), (h1, w1), (h2, w2) = ranges.size.min, ranges.size.opt, ranges.size.max
    f = vae_scale_factor
    return {
        "latent_height": (h0 // f, h1 // f, h2 // f),
        "latent_width": (w0 // f, w1 // f, w2 // f),
    }


def image_dims(ranges: BuildRanges, vae_scale_factor: int) -> DimRanges:
    """The latent sizes, and the image sizes one VAE factor above them."""
    latent = latent_dims(ranges, vae_scale_factor)
    f = vae_scale_factor
    (h0, h1, h2), (w0, w1, w2) = latent["latent_height"], latent["latent_width"]
    return {**latent, "height": (h0 * f, h1 * f, h2 * f), "width": (w0 * f, w1 * f, w2 * f)}


class ComponentSpec(ABC):
    """A network to export. Subclasses name their tensors and wrap the torch module."""

    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    @abstractmethod
    def dims(self, ranges: BuildRanges) -> DimRanges:
        """(min, opt, max) for every symbolic dim of this network, from the build ranges."""

    @abstractmethod
    def module(self) -> torch.nn.Module:
        """A module taking the inputs positionally, in order, and returning the outputs in order."""

    @abstractmethod
    def sample_inputs(self, point: Point, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """Realistic inputs at `point`, for tracing and for validation against torch."""

    def release(self) -> None:
        """Let go of the torch module (the build frees it before a backend builds the engine):
        names, dims and profiles stay usable; the module and sample inputs do not."""
        for name, value in list(vars(self).items()):
            if isinstance(value, torch.nn.Module):
                setattr(self, name, None)

    def opt_point(self, ranges: BuildRanges) -> Point:
        return {symbol: opt for symbol, (_, opt, _) in self.dims(ranges).items()}

    def trace_point(self, ranges: BuildRanges) -> Point:
        """The sizes to trace the export at; the optimal ones unless the network needs otherwise."""
        return self.opt_point(ranges)

    def io(self, ranges: BuildRanges) -> ComponentIO:
        dims = self.dims(ranges)

        def shape(spec: TensorSpec, which: int) -> tuple[int, ...]:
            return tuple(d if isinstance(d, int) else dims[d][which] for d in spec.shape)

        profile = {
            t.name: ShapeRange(min=shape(t, 0), opt=shape(t, 1), max=shape(t, 2))
            for t in self.inputs
            if any(isinstance(d, str) for d in t.shape)
        }
        return ComponentIO(inputs=self.inputs, outputs=self.outputs, profile=profile)

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        return {
            t.name: {axis: d for axis, d in enumerate(t.shape) if isinstance(d, str)}
            for t in (*self.inputs, *self.outputs)
        }


class Wrapper(torch.nn.Module):
    """Adapts a diffusers/transformers module to positional tensors in, tensors out."""

    def __init__(self, inner: torch.nn.Module, call: Any) -> None:
        super().__init__()
        self.inner = inner
        self._call = call

    def forward(self, *args: torch.Tensor) -> Any:
        return self._call(self.inner, *args)
