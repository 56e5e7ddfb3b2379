"""The denoising UNet's spec (SD 1.x/2.x, SDXL, latent consistency models, inpainting)."""

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
    latent_dims,
    text_dims,
)


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

    def dims(self, ranges: BuildRanges) -> DimRanges:
        return {
            "batch": batch_dims(ranges, 2),
            **latent_dims(ranges, self.vae_scale_factor),
            "text_tokens": text_dims(ranges, self.max_length),
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

        def call(m: Any, sample: Any, t: Any, context: Any, *extra: Any) -> Any:
            named = dict(zip(names, extra, strict=True))
            added = {k: named[k] for k in ("text_embeds", "time_ids") if k in named}
            return m(
                sample,
                t,
                context,
                timestep_cond=named.get("timestep_cond"),
                added_cond_kwargs=added or None,
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
        for spec in self.inputs[3:]:
            width = int(spec.shape[1])
            if spec.name == "text_embeds":
                inputs[spec.name] = rng.standard_normal((batch, width), dtype=np.float32)
            elif spec.name == "time_ids":
                # Sizes in pixels, a zero crop, and the target size (or aesthetic score 6).
                f = self.vae_scale_factor
                size = [point["latent_height"] * f, point["latent_width"] * f]
                ids = [*size, 0, 0, *(size if width == 6 else [6.0])]
                inputs[spec.name] = np.tile(np.asarray(ids, np.float32), (batch, 1))
            else:  # timestep_cond: guidance scale 7.5, as a latent consistency model embeds it
                inputs[spec.name] = _guidance_embedding(7.5, batch, width)
        return inputs


def _guidance_embedding(guidance_scale: float, batch: int, width: int) -> np.ndarray:
    """The UNet's `timestep_cond` for a guidance scale, as LatentConsistencyModelPipeline makes
    it (an instance method that uses nothing of its instance)."""
    from diffusers import LatentConsistencyModelPipeline

    scales = torch.full((batch,), guidance_scale - 1.0)
    make = LatentConsistencyModelPipeline.get_guidance_scale_embedding
    return make(None, scales, embedding_dim=width).numpy()  # type: ignore[arg-type]
