"""A built engine against the PyTorch module it came from, on the same inputs."""

from __future__ import annotations

import numpy as np
import torch

from sdtrt.engine.base import Engine
from sdtrt.engine.manifest import Validation
from sdtrt.errors import BuildError, SdtrtError, first_line
from sdtrt.export.lean import blocks_in_fp32
from sdtrt.export.specs import ComponentSpec


def torch_reference(spec: ComponentSpec, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    module = spec.module().eval()
    with torch.no_grad(), blocks_in_fp32(module):  # a module loaded in 16 bits runs in fp32
        result = module(*(torch.from_numpy(inputs[t.name]) for t in spec.inputs))
    results = result if isinstance(result, (tuple, list)) else (result,)
    return {t.name: r.float().numpy() for t, r in zip(spec.outputs, results, strict=True)}


def compare(
    reference: dict[str, np.ndarray], actual: dict[str, np.ndarray], tolerance: float
) -> list[Validation]:
    """Errors of `actual` against `reference`, per output; tolerance is relative to output scale."""
    report = []
    for name, expected in reference.items():
        got = actual[name]
        if got.shape != expected.shape:
            raise BuildError(f"output '{name}' has shape {got.shape}, torch gives {expected.shape}")
        error = float(np.max(np.abs(got.astype(np.float64) - expected))) if expected.size else 0.0
        scale = float(np.max(np.abs(expected))) if expected.size else 0.0
        if not np.isfinite(error):
            error = float("inf")
        report.append(
            Validation(
                output=name,
                max_abs_error=error,
                output_scale=scale,
                relative_error=error / scale if scale > 0 else error,
                tolerance=tolerance,
            )
        )
    return report


def validate(
    spec: ComponentSpec,
    engine: Engine,
    inputs: dict[str, np.ndarray],
    tolerance: float,
    expected: dict[str, np.ndarray] | None = None,
) -> list[Validation]:
    """Run both on `inputs` (torch's outputs may be `expected`, taken before the module was
    released); raise BuildError when any output misses the tolerance, or when the engine does
    not run at all (the runtime's own error, in one line)."""
    if expected is None:
        expected = torch_reference(spec, inputs)
    try:
        produced = engine.infer(inputs)
    except SdtrtError:
        raise
    except Exception as error:  # the runtime's errors have no common type
        raise BuildError(
            f"the built {spec.name} engine failed to run: {first_line(error, 300)}"
        ) from error
    report = compare(expected, produced, tolerance)
    for item in report:
        if not item.relative_error <= tolerance:
            raise BuildError(
                f"{spec.name} output '{item.output}' differs from torch by "
                f"{item.max_abs_error:.3g} "
                f"({item.relative_error:.3g} of its scale {item.output_scale:.3g}; "
                f"allowed {tolerance:.3g})"
            )
    return report
