"""Build settings: made by the CLI or an API caller, recorded in the manifest."""

from __future__ import annotations

from enum import Enum

from pydantic import BaseModel, ConfigDict


class Precision(str, Enum):
    FP32 = "fp32"
    FP16 = "fp16"


class BuildOptions(BaseModel):
    """How to turn ONNX files into engines, and for which image sizes and batches.

    Sizes are (height, width) in pixels; None picks the model's defaults (0.5x to 2x its native
    size, optimised for the native size). `static` builds for exactly one shape (the optimal
    size and `max_batch` images), which lets TensorRT replay each step as a CUDA graph.
    """

    model_config = ConfigDict(frozen=True)

    backend: str = "onnxruntime"
    precision: Precision = Precision.FP32
    fp16_vae: bool = False  # the VAE decoder stays fp32 under fp16 unless the model's VAE is safe
    min_size: tuple[int, int] | None = None
    opt_size: tuple[int, int] | None = None
    max_size: tuple[int, int] | None = None
    max_batch: int = 4
    static: bool = False
    workspace_gib: float | None = None  # TensorRT's workspace limit; None lets TensorRT decide
    optimization_level: int = 3  # TensorRT builder optimisation level, 0 (fast build) to 5
