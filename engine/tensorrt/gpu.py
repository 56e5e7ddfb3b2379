"""The GPU TensorRT runs on, found before anything TensorRT is imported."""

from __future__ import annotations

import importlib.util
from typing import Any

from sdtrt.engine import cuda
from sdtrt.errors import BackendUnavailable


def require_gpu() -> dict[str, Any]:
    """The GPU TensorRT will use; BackendUnavailable without TensorRT, CUDA or a usable GPU."""
    spec = importlib.util.find_spec("tensorrt")
    if spec is None or spec.origin is None:  # type stubs alone leave an empty namespace package
        raise BackendUnavailable(
            "TensorRT is not installed; run `pip install 'sdtrt[tensorrt]'` on a machine with an "
            "NVIDIA GPU (`sdtrt doctor` shows what is missing)"
        )
    cuda.require()
    if cuda.device_count() == 0:  # raises with CUDA's own words where the GPU is unusable
        raise BackendUnavailable("TensorRT needs an NVIDIA GPU, and none is visible here")
    return cuda.device_properties(0)
