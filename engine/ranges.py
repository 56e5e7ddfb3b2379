"""Which image sizes and batch sizes a build covers, and the checks against them.

Every per-network profile (latent sizes, doubled batches for guidance) derives from these two
ranges, so the user reasons in pixels and images while engines see tensor shapes.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from sdtrt.engine.options import BuildOptions
from sdtrt.errors import InputError

Size = tuple[int, int]  # (height, width) in pixels


class SizeRange(BaseModel):
    model_config = ConfigDict(frozen=True)

    min: Size
    opt: Size
    max: Size

    def describe(self) -> str:
        (h0, w0), (h1, w1) = self.min, self.max
        return f"{h0}..{h1} high and {w0}..{w1} wide"


class BuildRanges(BaseModel):
    """Image sizes (pixels) and images per call that the engines are built for."""

    model_config = ConfigDict(frozen=True)

    size: SizeRange
    size_step: int
    max_batch: int
    static: bool = False  # exactly size.opt; 1 to max_batch images, guided or not
    # Exactly size.opt, max_batch images with guidance and one prompt chunk: for devices that
    # compile one shape per input (an NPU).
    fixed_shapes: bool = False
    # Text-encoder-lengths the UNet attends to at most (one for manifests from before chunks).
    max_prompt_chunks: int = 1


def _round_down(value: float, step: int) -> int:
    return max(step, int(value) // step * step)


def _round_up(value: float, step: int) -> int:
    return -(-int(value) // step) * step


def resolve_ranges(
    options: BuildOptions, native: Size, size_step: int, fixed_shapes: bool = False
) -> BuildRanges:
    """Fill in the defaults (0.5x-2x the native size, optimised for native) and check the
    result; `fixed_shapes` (a backend that compiles one shape per input) pins every shape to
    the optimum, as `--static` pins the size."""
    default_min = (_round_down(native[0] / 2, size_step), _round_down(native[1] / 2, size_step))
    default_max = (_round_up(native[0] * 2, size_step), _round_up(native[1] * 2, size_step))
    lo = options.min_size or default_min
    hi = options.max_size or default_max

    def check(label: str, size: Size) -> None:
        if any(v <= 0 or v % size_step for v in size):
            raise InputError(
                f"--{label}-size {size[0]}x{size[1]} must be positive multiples of {size_step}"
            )

    check("min", lo)
    check("max", hi)
    native_on_step = (_round_down(native[0], size_step), _round_down(native[1], size_step))
    opt = options.opt_size or (
        min(max(native_on_step[0], lo[0]), hi[0]),
        min(max(native_on_step[1], lo[1]), hi[1]),
    )
    check("opt", opt)
    if not all(a <= b <= c for a, b, c in zip(lo, opt, hi, strict=True)):
        raise InputError(
            f"sizes must satisfy min <= opt <= max in each dimension, got "
            f"min {lo[0]}x{lo[1]}, opt {opt[0]}x{opt[1]}, max {hi[0]}x{hi[1]}"
        )
    if options.static:
        lo = hi = opt
    return BuildRanges(
        size=SizeRange(min=lo, opt=opt, max=hi),
        size_step=size_step,
        max_batch=options.max_batch,
        static=options.static,
        fixed_shapes=fixed_shapes,
        max_prompt_chunks=1 if fixed_shapes else options.max_prompt_chunks,
    )


def check_image_size(ranges: BuildRanges, height: int, width: int) -> None:
    """Raise InputError unless height x width is a size these engines can make."""
    step = ranges.size_step
    for label, value in (("height", height), ("width", width)):
        if value <= 0 or value % step:
            raise InputError(f"{label} must be a positive multiple of {step}, got {value}")
    (h0, w0), (h1, w1) = ranges.size.min, ranges.size.max
    if not (h0 <= height <= h1 and w0 <= width <= w1):
        raise InputError(
            f"{height}x{width} is outside the built range ({ranges.size.describe()}); "
            "rebuild with --min-size/--max-size to cover it"
        )


def check_batch(ranges: BuildRanges, images: int, guided: bool = True) -> None:
    if images < 1:
        raise InputError(f"the batch must hold at least one image, got {images}")
    if ranges.fixed_shapes and (images != ranges.max_batch or not guided):
        raise InputError(
            f"these engines were compiled for fixed shapes: {ranges.max_batch} image(s) per "
            f"call, with guidance; got {images}{'' if guided else ' without guidance'}"
        )
    if images > ranges.max_batch:
        raise InputError(
            f"{images} images per call exceeds the built maximum of {ranges.max_batch}; "
            "rebuild with a larger --max-batch or ask for fewer images"
        )
