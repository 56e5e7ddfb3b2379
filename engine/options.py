"""Build settings: made by the CLI or an API caller, recorded in the manifest."""

from __future__ import annotations

from enum import Enum

from pydantic import BaseModel, ConfigDict


class Precision(str, Enum):
    FP32 = "fp32"


class BuildOptions(BaseModel):
    """How to turn ONNX files into engines, and for which image sizes and batches.

    Sizes are (height, width) in pixels; None picks the model's defaults (0.5x to 2x its native
    size, optimised for the native size).
    """

    model_config = ConfigDict(frozen=True)

    backend: str = "onnxruntime"
    precision: Precision = Precision.FP32
    min_size: tuple[int, int] | None = None
    opt_size: tuple[int, int] | None = None
    max_size: tuple[int, int] | None = None
    max_batch: int = 4
