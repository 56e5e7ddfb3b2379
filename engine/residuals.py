"""The tensors a ControlNet hands the UNet, as both networks name them, and their sizes: one
residual per skip connection of the UNet's down blocks (diffusers'
`down_block_additional_residuals`), then one for its middle block
(`mid_block_additional_residual`). Level k of them is the latent size downsampled k times."""

from __future__ import annotations

MID_RESIDUAL = "mid_residual"
_DOWN_PREFIX = "down_residual_"


def down_residual(index: int) -> str:
    return f"{_DOWN_PREFIX}{index}"


def is_residual(name: str) -> bool:
    return name == MID_RESIDUAL or name.startswith(_DOWN_PREFIX)


def level_dim(axis: str, level: int) -> str:
    """The symbolic dim of a residual's height or width ("height", "width") at `level` > 0."""
    return f"residual_{axis}_{level}"


def dim_level(symbol: str) -> int:
    return int(symbol.rsplit("_", 1)[1])


def downsampled(size: int, level: int, padding: int) -> int:
    """A latent size after `level` downsamplers: each halves it, rounding up where it pads its
    input (diffusers' `downsample_padding` 1, the default) and down where it does not."""
    for _ in range(level):
        size = -(-size // 2) if padding else size // 2
    return size
