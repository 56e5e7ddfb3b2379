"""SD 3's denoiser, the MMDiT transformer (`SD3Transformer2DModel`): latents cut into patches,
attended to jointly with the text tokens, and the prediction put back together."""

from __future__ import annotations

import functools
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
)
from sdtrt.export.specs.text_encoders import t5_dims


class TransformerSpec(ComponentSpec):
    """The transformer under the loop's names: latents (`sample`), the timestep (sigma x 1000),
    the text tokens (both CLIP encoders' states side by side, padded to T5's width, then T5's
    states: `text_tokens` = CLIP's length + T5's) and both CLIP encoders' pooled outputs."""

    name = "transformer"

    def __init__(self, transformer: Any, vae_scale_factor: int, clip_length: int) -> None:
        self.transformer = transformer
        self.vae_scale_factor = vae_scale_factor
        self.clip_length = clip_length
        config = transformer.config
        self.patch_size = int(config.patch_size)
        latent = ("batch", int(config.in_channels), "latent_height", "latent_width")
        self.inputs = (
            TensorSpec(name="sample", dtype="float32", shape=latent),
            TensorSpec(name="timestep", dtype="float32", shape=("batch",)),
            TensorSpec(
                name="encoder_hidden_states",
                dtype="float32",
                shape=("batch", "text_tokens", int(config.joint_attention_dim)),
            ),
            TensorSpec(
                name="pooled_projections",
                dtype="float32",
                shape=("batch", int(config.pooled_projection_dim)),
            ),
            # 1 runs a layer, 0 skips it (skip-layer guidance, runtime/skip_guidance.py).
            TensorSpec(name="layer_mask", dtype="float32", shape=(int(config.num_layers),)),
        )
        out = ("batch", int(config.out_channels), "latent_height", "latent_width")
        self.outputs = (TensorSpec(name="noise_pred", dtype="float32", shape=out),)

    def dims(self, ranges: BuildRanges) -> DimRanges:
        low, opt, high = (self.clip_length + n for n in t5_dims(ranges))
        return {
            "batch": batch_dims(ranges, 2),
            **latent_dims(ranges, self.vae_scale_factor),
            "text_tokens": (low, opt, high),
        }

    def trace_point(self, ranges: BuildRanges) -> Point:
        # Traced at a text length other than the one validated, so that a length the trace
        # fixed fails the build rather than a call with another max_sequence_length.
        point = self.opt_point(ranges)
        low, _, high = self.dims(ranges)["text_tokens"]
        point["text_tokens"] = max(low, min(high, point["text_tokens"] - 1))
        return point

    def module(self) -> torch.nn.Module:
        def call(m: Any, sample: Any, t: Any, context: Any, pooled: Any, mask: Any) -> Any:
            # Each layer's outputs blend with its inputs by its mask value: exactly the layer
            # for 1, exactly skipping it for 0 (what diffusers' `skip_layers` does).
            hooks = [
                block.register_forward_hook(
                    functools.partial(_masked, mask[index]), with_kwargs=True
                )
                for index, block in enumerate(m.transformer_blocks)
            ]
            try:
                return m(
                    hidden_states=sample,
                    timestep=t,
                    encoder_hidden_states=context,
                    pooled_projections=pooled,
                    return_dict=False,
                )[0]
            finally:
                for hook in hooks:
                    hook.remove()

        return Wrapper(self.transformer, call)

    def sample_inputs(self, point: Point, rng: np.random.Generator) -> dict[str, np.ndarray]:
        batch = point["batch"]
        shapes = {spec.name: spec.shape for spec in self.inputs}
        latent = (batch, int(shapes["sample"][1]), point["latent_height"], point["latent_width"])
        width = int(shapes["encoder_hidden_states"][2])
        return {
            "sample": rng.standard_normal(latent, dtype=np.float32),
            # Flow matching's timesteps are sigma x 1000, fractional.
            "timestep": np.full((batch,), 637.5, dtype=np.float32),
            "encoder_hidden_states": rng.standard_normal(
                (batch, point["text_tokens"], width), dtype=np.float32
            ),
            "pooled_projections": rng.standard_normal(
                (batch, int(shapes["pooled_projections"][1])), dtype=np.float32
            ),
            "layer_mask": np.ones((int(shapes["layer_mask"][0]),), dtype=np.float32),
        }


def _masked(keep: Any, block: Any, args: Any, kwargs: dict[str, Any], output: Any) -> Any:
    """A joint block's (text, image) outputs, or its inputs where `keep` is 0."""
    context, hidden = output
    hidden = keep * hidden + (1 - keep) * kwargs["hidden_states"]
    if context is not None:  # the last block updates the image tokens only
        context = keep * context + (1 - keep) * kwargs["encoder_hidden_states"]
    return context, hidden
