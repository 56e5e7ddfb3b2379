"""The residuals a ControlNet hands the UNet, named and sized alike on both sides: one per skip
connection of the UNet's down blocks (diffusers' `down_block_additional_residuals`) and one for
its middle block (`mid_block_additional_residual`)."""

from __future__ import annotations

from typing import Any

import numpy as np

from sdtrt.engine.residuals import (
    MID_RESIDUAL,
    dim_level,
    down_residual,
    downsampled,
    level_dim,
)
from sdtrt.engine.tensors import TensorSpec
from sdtrt.export.specs.base import DimRanges, Point


def residual_tensors(module: Any) -> tuple[TensorSpec, ...]:
    """The residuals of a UNet's (or a ControlNet's, which mirrors it) down and middle blocks:
    one per resnet of each down block, one per downsampler, and conv_in's before them, each at
    its level's latent size (dims `residual_height_<level>`, halved at each downsampler)."""
    level, shapes = 0, [(int(module.conv_in.out_channels), 0)]
    for block in module.down_blocks:
        shapes += [(int(resnet.out_channels), level) for resnet in block.resnets]
        if block.downsamplers:
            level += 1
            shapes.append((int(block.downsamplers[0].out_channels), level))
    middle = (int(module.mid_block.resnets[-1].out_channels), level)
    return tuple(
        TensorSpec(name=name, dtype="float32", shape=_residual_shape(channels, at))
        for name, (channels, at) in zip(
            [*(down_residual(i) for i in range(len(shapes))), MID_RESIDUAL],
            [*shapes, middle],
            strict=True,
        )
    )


def _residual_shape(channels: int, level: int) -> tuple[int | str, ...]:
    if level == 0:
        return ("batch", channels, "latent_height", "latent_width")
    return ("batch", channels, level_dim("height", level), level_dim("width", level))


def residual_dims(latent: DimRanges, residuals: tuple[TensorSpec, ...], padding: int) -> DimRanges:
    """(min, opt, max) of each residual level's size, from the latent sizes'."""
    dims: DimRanges = {}
    for tensor in residuals:
        for axis, symbol in ((2, "latent_height"), (3, "latent_width")):
            name = tensor.shape[axis]
            if isinstance(name, str) and name != symbol:
                lo, opt, hi = latent[symbol]
                level = dim_level(name)
                dims[name] = (
                    downsampled(lo, level, padding),
                    downsampled(opt, level, padding),
                    downsampled(hi, level, padding),
                )
    return dims


def random_residuals(
    residuals: tuple[TensorSpec, ...], point: Point, padding: int, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """Residuals for the latent size at `point`, of a ControlNet's scale (unit variance)."""

    def size(dim: int | str, latent: str) -> int:
        if isinstance(dim, int):
            return dim
        if dim in ("batch", latent):
            return point[dim]
        return downsampled(point[latent], dim_level(dim), padding)

    return {
        t.name: rng.standard_normal(
            (
                size(t.shape[0], "batch"),
                size(t.shape[1], ""),
                size(t.shape[2], "latent_height"),
                size(t.shape[3], "latent_width"),
            ),
            dtype=np.float32,
        )
        for t in residuals
    }
