"""The run-time guard against NaN and infinity: one reduction per array, an error, no black image.

fp16 engines overflow where an activation passes 65504; the inf becomes NaN a few layers later
and the image comes out black or grey. Checking every step's latents and the decoded image costs
one sum each (a NaN or inf anywhere makes the sum non-finite), so the guard is always on.
"""

from __future__ import annotations

import numpy as np

from sdtrt.engine.manifest import Manifest
from sdtrt.engine.options import Precision
from sdtrt.errors import NumericalError
from sdtrt.runtime.families import family_of


def is_finite(array: np.ndarray) -> bool:
    """True when no element is NaN or infinite."""
    # One pass: the sum is finite unless an element is not (or finite values add up past the
    # float range, which the exact check below tells apart).
    with np.errstate(over="ignore", invalid="ignore"):
        if np.isfinite(np.sum(array, dtype=np.float32)):
            return True
    return bool(np.isfinite(array).all())


def _fix(manifest: Manifest, component: str) -> str:
    """What to do about a NaN from `component` of the engines in `manifest`."""
    record = manifest.components.get(component)
    options = manifest.build_options
    if record is None or record.precision is Precision.FP32:
        return (
            "the model's weights or the inputs are out of range; "
            "check the engines with `sdtrt debug compare`"
        )
    if options.fp16_guard:
        return (
            "the fp16 guard's calibration inputs did not reach this overflow; find it with "
            "`sdtrt debug compare` or rebuild with --precision fp32"
        )
    if component.endswith("vae_decoder"):
        return "rebuild with --fp32-vae (the VAE decoder in fp32) or with --fp16-guard"
    return (
        f"rebuild with `sdtrt build --precision {record.precision.value} --fp16-guard`, "
        "which keeps the overflowing layers in fp32, or with --precision fp32"
    )


def check_step(latents: np.ndarray, step: int, steps: int, manifest: Manifest) -> None:
    """Raise NumericalError when the latents after denoiser step `step` (0-based) hold NaN/inf."""
    if not is_finite(latents):
        denoiser = family_of(manifest.model).denoiser
        raise NumericalError(
            f"the {denoiser} produced NaN/inf at step {step + 1} of {steps}; "
            f"{_fix(manifest, denoiser)}"
        )


def check_image(image: np.ndarray, manifest: Manifest, decoder: str = "vae_decoder") -> None:
    """Raise NumericalError when the image `decoder` decoded holds NaN/inf, before it becomes a
    picture."""
    if not is_finite(image):
        raise NumericalError(f"the {decoder} produced NaN/inf; {_fix(manifest, decoder)}")
