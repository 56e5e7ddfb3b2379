"""ControlNet: its spec, and the residuals it hands the UNet.

A ControlNet is a copy of the UNet's encoder that reads a hint image (edges, depth, pose...)
and returns one residual per skip connection of the UNet's down blocks and one for its middle
block; the UNet adds them to its own (diffusers' `down_block_additional_residuals` and
`mid_block_additional_residual`). The network is exported unscaled (conditioning scale 1):
scales, guess mode's ramp, the steps it acts on and the sum over several ControlNets are the
runtime's (runtime/controlnet.py), so one engine serves every setting.
"""

from __future__ import annotations

from collections.abc import Callable
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
    text_dims,
)
from sdtrt.export.specs.residuals import residual_dims, residual_tensors
from sdtrt.export.specs.unet import time_ids_for

# The conditioning a ControlNet takes besides the latents and the hint: the UNet's own, less a
# latent consistency model's guidance embedding (diffusers never passes it to a ControlNet).
CONTROLNET_CONDITIONING = ("timestep", "encoder_hidden_states", "text_embeds", "time_ids")


class ControlNetSpec(ComponentSpec):
    """A diffusers ControlNetModel, built as `controlnet/<name>`: the UNet's latents, timestep
    and text conditioning (SDXL's pooled prompt and time ids too) and the hint image, in
    [0, 1] at the output size, to the residuals."""

    def __init__(
        self,
        name: str,
        skeleton: Any,
        load: Callable[[], Any],
        conditioning: tuple[TensorSpec, ...],
        vae_scale_factor: int,
        max_length: int,
    ) -> None:
        """`skeleton`: the ControlNetModel without its weights (on torch's meta device), whose
        layers name the residuals; `load` loads it with them, once it is to be exported (a
        build that reuses its engine never does). `conditioning`: the UNet's inputs, of which
        it takes CONTROLNET_CONDITIONING."""
        self.name = name
        self.load = load
        self.controlnet: Any = None
        self.vae_scale_factor = vae_scale_factor
        self.max_length = max_length
        config = skeleton.config
        self.padding = int(getattr(config, "downsample_padding", 1))
        self.down_factor = 2 ** (len(config.block_out_channels) - 1)
        sample = TensorSpec(
            name="sample",
            dtype="float32",
            shape=("batch", int(config.in_channels), "latent_height", "latent_width"),
        )
        hint = TensorSpec(
            name="controlnet_cond",
            dtype="float32",
            shape=("batch", int(config.conditioning_channels), "height", "width"),
        )
        taken = [t for t in conditioning if t.name in CONTROLNET_CONDITIONING]
        self.inputs = (sample, taken[0], taken[1], hint, *taken[2:])
        self.outputs = residual_tensors(skeleton)

    def dims(self, ranges: BuildRanges) -> DimRanges:
        images = image_dims(ranges, self.vae_scale_factor)
        return {
            "batch": batch_dims(ranges, 2),
            **images,
            "text_tokens": text_dims(ranges, self.max_length),
            **residual_dims(images, self.outputs, self.padding),
        }

    def trace_point(self, ranges: BuildRanges) -> Point:
        # As the UNet's (export/specs/unet.py): a latent size its downsampling does not divide
        # records the exact path for every size; the hint image follows the latents.
        point = self.opt_point(ranges)
        f = self.vae_scale_factor
        for latent, image in (("latent_height", "height"), ("latent_width", "width")):
            if self.down_factor > 1 and point[latent] % self.down_factor == 0:
                point[latent] += 1
            point[image] = point[latent] * f
        point["text_tokens"] = min(2 * self.max_length, self.dims(ranges)["text_tokens"][2])
        return point

    def module(self) -> torch.nn.Module:
        extra_names = [t.name for t in self.inputs[4:]]

        def call(m: Any, sample: Any, t: Any, context: Any, hint: Any, *extra: Any) -> Any:
            added = dict(zip(extra_names, extra, strict=True))
            down, middle = m(
                sample,
                t,
                encoder_hidden_states=context,
                controlnet_cond=hint,
                conditioning_scale=1.0,
                added_cond_kwargs=added or None,
                return_dict=False,
            )
            return (*down, middle)

        if self.controlnet is None:
            self.controlnet = self.load()
        return Wrapper(self.controlnet, call)

    def sample_inputs(self, point: Point, rng: np.random.Generator) -> dict[str, np.ndarray]:
        batch, f = point["batch"], self.vae_scale_factor
        height, width = point["latent_height"], point["latent_width"]
        inputs = {
            "sample": rng.standard_normal(
                (batch, int(self.inputs[0].shape[1]), height, width), dtype=np.float32
            ),
            "timestep": np.full((batch,), 500.0, dtype=np.float32),
            "encoder_hidden_states": rng.standard_normal(
                (batch, point["text_tokens"], int(self.inputs[2].shape[2])), dtype=np.float32
            ),
            # A hint is an image in [0, 1]: edges or depth on black, for instance.
            "controlnet_cond": rng.random(
                (batch, int(self.inputs[3].shape[1]), height * f, width * f), dtype=np.float32
            ),
        }
        for spec in self.inputs[4:]:
            width_of = int(spec.shape[1])
            if spec.name == "text_embeds":
                inputs[spec.name] = rng.standard_normal((batch, width_of), dtype=np.float32)
            else:
                inputs[spec.name] = time_ids_for(height * f, width * f, width_of, batch)
        return inputs
