"""Host-side decisions of the TensorRT backend, as pure functions (tested without a GPU)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from sdtrt.engine.tensors import ComponentIO, Shape
from sdtrt.errors import EngineIncompatible, InputError


def profile_shapes(io: ComponentIO) -> list[tuple[str, Shape, Shape, Shape]]:
    """(input, min, opt, max) for the optimisation profile; fixed inputs get their one shape."""
    result = []
    for spec in io.inputs:
        shape_range = io.profile.get(spec.name)
        if shape_range is not None:
            result.append((spec.name, shape_range.min, shape_range.opt, shape_range.max))
        elif all(isinstance(d, int) for d in spec.shape):
            fixed = tuple(int(d) for d in spec.shape)
            result.append((spec.name, fixed, fixed, fixed))
        else:
            raise InputError(f"input '{spec.name}' has dynamic dims but no shape range")
    return result


def nbytes(shape: Shape, dtype: str) -> int:
    return int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize


def _release(version: str) -> tuple[str, ...]:
    return tuple(version.split(".")[:3])


def check_compatible(
    settings: Mapping[str, Any], trt_version: str, capability: str, path: Path
) -> None:
    """Refuse, before deserialising, an engine built by another TensorRT release or for another
    GPU architecture: TensorRT plans are specific to both."""
    built_version = str(settings.get("tensorrt_version", "unknown"))
    if _release(built_version) != _release(trt_version):
        raise EngineIncompatible(
            f"{path} was built with TensorRT {built_version}, this is TensorRT {trt_version}; "
            "rebuild the engines with `sdtrt build --backend tensorrt`"
        )
    built_capability = str(settings.get("compute_capability", "unknown"))
    if built_capability != capability:
        gpu = settings.get("gpu_name", "another GPU")
        raise EngineIncompatible(
            f"{path} was built for {gpu} (compute capability {built_capability}), this GPU has "
            f"{capability}; rebuild the engines here with `sdtrt build --backend tensorrt`"
        )
