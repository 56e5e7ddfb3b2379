"""The denoising UNet's spec (SD 1.x/2.x, SDXL, latent consistency models, inpainting)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from sdtrt.engine.ranges import BuildRanges
from sdtrt.engine.residuals import MID_RESIDUAL
from sdtrt.engine.tensors import TensorSpec
from sdtrt.export.specs.base import (
    ComponentSpec,
    DimRanges,
    Point,
    Wrapper,
    batch_dims,
    latent_dims,
    text_dims,
)
from sdtrt.export.specs.residuals import random_residuals, residual_dims, residual_tensors


class UNetSpec(ComponentSpec):
    """The denoising UNet: noisy latents, timestep and text states to the model's prediction.

    SDXL's UNet also takes the pooled prompt (`text_embeds`) and its size numbers (`time_ids`);
    a latent consistency model's takes the guidance scale's embedding (`timestep_cond`)."""

    name = "unet"

    def __init__(
        self,
        unet: Any,
        vae_scale_factor: int,
        max_length: int,
        pooled_dim: int | None = None,
        time_ids: int | None = None,
    ) -> None:
        self.unet = unet
        self.vae_scale_factor = vae_scale_factor
        self.max_length = max_length
        config = unet.config
        self.down_factor = 2 ** (len(config.block_out_channels) - 1)
        channels, context = int(config.in_channels), int(config.cross_attention_dim)
        latent = ("batch", channels, "latent_height", "latent_width")
        extra = []
        if pooled_dim is not None and time_ids is not None:
            extra += [
                TensorSpec(name="text_embeds", dtype="float32", shape=("batch", pooled_dim)),
                TensorSpec(name="time_ids", dtype="float32", shape=("batch", time_ids)),
            ]
        self.guidance_embedding_dim = getattr(config, "time_cond_proj_dim", None)
        if self.guidance_embedding_dim is not None:
            shape = ("batch", int(self.guidance_embedding_dim))
            extra.append(TensorSpec(name="timestep_cond", dtype="float32", shape=shape))
        self.inputs = (
            TensorSpec(name="sample", dtype="float32", shape=latent),
            TensorSpec(name="timestep", dtype="float32", shape=("batch",)),
            TensorSpec(
                name="encoder_hidden_states",
                dtype="float32",
                shape=("batch", "text_tokens", context),
            ),
            *extra,
        )
        out = ("batch", int(config.out_channels), "latent_height", "latent_width")
        self.outputs = (TensorSpec(name="noise_pred", dtype="float32", shape=out),)
        # ControlNets' residuals, once `take_residuals` makes them inputs.
        self.residuals: tuple[TensorSpec, ...] = ()
        self.padding = int(getattr(config, "downsample_padding", 1))

    def take_residuals(self) -> None:
        """Take ControlNet residuals as inputs too (export/specs/residuals.py): what a build
        with ControlNets exports. Requests without a ControlNet feed zeros."""
        self.residuals = residual_tensors(self.unet)
        self.inputs = (*self.inputs, *self.residuals)

    def dims(self, ranges: BuildRanges) -> DimRanges:
        latent = latent_dims(ranges, self.vae_scale_factor)
        return {
            "batch": batch_dims(ranges, 2),
            **latent,
            "text_tokens": text_dims(ranges, self.max_length),
            **residual_dims(latent, self.residuals, self.padding),
        }

    def trace_point(self, ranges: BuildRanges) -> Point:
        # diffusers' UNet upsamples by a fixed factor when the latent size divides its downsampling
        # factor, and to the skip connection's size otherwise. Tracing at a size that does not
        # divide records the second path, which is exact for every size, so the engine accepts
        # any multiple of the VAE factor as diffusers does.
        point = self.opt_point(ranges)
        if self.down_factor > 1:
            for symbol in ("latent_height", "latent_width"):
                if point[symbol] % self.down_factor == 0:
                    point[symbol] += 1
        # Traced longer than it is validated (at one chunk) where the range allows, so that a
        # text length fixed by the trace would fail the build instead of a long prompt.
        point["text_tokens"] = min(2 * self.max_length, self.dims(ranges)["text_tokens"][2])
        return point

    def module(self) -> torch.nn.Module:
        names = [t.name for t in self.inputs[3:]]
        down = [t.name for t in self.residuals if t.name != MID_RESIDUAL]

        def call(m: Any, sample: Any, t: Any, context: Any, *extra: Any) -> Any:
            named = dict(zip(names, extra, strict=True))
            added = {k: named[k] for k in ("text_embeds", "time_ids") if k in named}
            return m(
                sample,
                t,
                context,
                timestep_cond=named.get("timestep_cond"),
                added_cond_kwargs=added or None,
                down_block_additional_residuals=tuple(named[k] for k in down) or None,
                mid_block_additional_residual=named.get(MID_RESIDUAL),
                return_dict=False,
            )[0]

        return Wrapper(self.unet, call)

    def sample_inputs(self, point: Point, rng: np.random.Generator) -> dict[str, np.ndarray]:
        batch = point["batch"]
        _, channels, _, _ = self.inputs[0].shape
        context = self.inputs[2].shape[2]
        latent = (batch, int(channels), point["latent_height"], point["latent_width"])
        inputs = {
            "sample": rng.standard_normal(latent, dtype=np.float32),
            "timestep": np.full((batch,), 500.0, dtype=np.float32),
            "encoder_hidden_states": rng.standard_normal(
                (batch, point["text_tokens"], int(context)), dtype=np.float32
            ),
        }
        for spec in self.inputs[3 : len(self.inputs) - len(self.residuals)]:
            width = int(spec.shape[1])
            if spec.name == "text_embeds":
                inputs[spec.name] = rng.standard_normal((batch, width), dtype=np.float32)
            elif spec.name == "time_ids":
                f = self.vae_scale_factor
                size = (point["latent_height"] * f, point["latent_width"] * f)
                inputs[spec.name] = time_ids_for(*size, width, batch)
            elif spec.name == "timestep_cond":  # guidance 7.5, as a consistency model embeds it
                inputs[spec.name] = _guidance_embedding(7.5, batch, width)
        inputs.update(random_residuals(self.residuals, point, self.padding, rng))
        return inputs


def time_ids_for(height: int, width: int, count: int, batch: int) -> np.ndarray:
    """SDXL's time ids for an image of height x width px: its size, a zero crop, and the target
    size (or, `count` 5, a refiner's aesthetic score of 6)."""
    ids = [height, width, 0, 0, *((height, width) if count == 6 else (6.0,))]
    return np.tile(np.asarray(ids, np.float32), (batch, 1))


def _guidance_embedding(guidance_scale: float, batch: int, width: int) -> np.ndarray:
    """The UNet's `timestep_cond` for a guidance scale, as LatentConsistencyModelPipeline makes
    it (an instance method that uses nothing of its instance)."""
    from diffusers import LatentConsistencyModelPipeline

    scales = torch.full((batch,), guidance_scale - 1.0)
    make = LatentConsistencyModelPipeline.get_guidance_scale_embedding
    return make(None, scales, embedding_dim=width).numpy()  # type: ignore[arg-type]
