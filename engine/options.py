"""Build settings: made by the CLI or an API caller, recorded in the manifest.

Their checks live on them, so that a Python caller gets the same one-line refusals (InputError,
naming the CLI's flag) as the command line; what depends on the model (sizes on its VAE's grid)
is checked when the model is read (engine/ranges.py), what depends on the backend by the
backend (engine/backends.py).
"""

from __future__ import annotations

from enum import Enum

from pydantic import BaseModel, ConfigDict, field_validator, model_validator

from sdtrt.engine.weights.lora import LoraSource
from sdtrt.errors import InputError

DEFAULT_OPSET = 17


class Precision(str, Enum):
    """What a network computes in. FP16 converts the ONNX graph itself; BF16, INT8 and W8A8 keep
    the fp32 graph and are the backend's own: OpenVINO computes in bfloat16 on CPUs that have it,
    stores weights as int8 (weight compression) and computes in fp32, or (W8A8) quantizes the
    UNet's weights and activations to int8, calibrated on its inputs in real denoising runs,
    computing the rest in bfloat16 where the CPU has it."""

    FP32 = "fp32"
    FP16 = "fp16"
    BF16 = "bf16"
    INT8 = "int8"
    W8A8 = "w8a8"


class BuildOptions(BaseModel):
    """How to turn ONNX files into engines, and for which image sizes and batches.

    Sizes are (height, width) in pixels; None picks the model's defaults (0.5x to 2x its native
    size, optimised for the native size). `static` builds for exactly one image size (the
    optimal one) and 1 to `max_batch` images, tuned for `max_batch`; TensorRT then records each
    shape it meets as a CUDA graph and replays it.
    """

    model_config = ConfigDict(frozen=True)

    # "auto" picks the fastest backend usable here (engine/auto.py); the manifest records which.
    backend: str = "auto"
    precision: Precision = Precision.FP32
    fp16_vae: bool = False  # the VAE decoder stays fp32 under fp16 unless the model's VAE is safe
    # fp16: compare the converted graph with fp32 on calibration inputs and keep in fp32 the
    # nodes that overflow or drift (export/fp16/guard.py); the VAE decoder is searched too
    # instead of staying fp32 whole.
    fp16_guard: bool = False
    min_size: tuple[int, int] | None = None
    opt_size: tuple[int, int] | None = None
    max_size: tuple[int, int] | None = None
    max_batch: int = 4
    # Prompts in the A1111 syntax run in chunks of 75 tokens; the UNet takes up to this many.
    max_prompt_chunks: int = 3
    static: bool = False
    workspace_gib: float | None = None  # TensorRT's workspace limit; None lets TensorRT decide
    optimization_level: int = 3  # TensorRT builder optimisation level, 0 (fast build) to 5
    # TensorRT engines whose weights can be replaced after the build (LoRA switching); ONNX
    # Runtime engines always can be.
    refittable: bool = False

    @field_validator("max_batch", "max_prompt_chunks")
    @classmethod
    def _at_least_one(cls, value: int, info: object) -> int:
        if value < 1:
            flag = "--" + getattr(info, "field_name", "").replace("_", "-")
            raise InputError(f"{flag} must be at least 1, got {value}")
        return value

    @field_validator("optimization_level")
    @classmethod
    def _optimization_level(cls, value: int) -> int:
        if not 0 <= value <= 5:
            raise InputError(f"--optimization-level must be 0 to 5, got {value}")
        return value

    @field_validator("workspace_gib")
    @classmethod
    def _workspace(cls, value: float | None) -> float | None:
        if value is not None and not value > 0:
            raise InputError(f"--workspace must be a positive number of GiB, got {value}")
        return value

    @model_validator(mode="after")
    def _guard_needs_fp16(self) -> BuildOptions:
        if self.fp16_guard and self.precision is not Precision.FP16:
            raise InputError(
                "--fp16-guard checks fp16 graphs; add --precision fp16 "
                f"(got {self.precision.value})"
            )
        return self

    @property
    def guarded(self) -> bool:
        """Whether the fp16 guard runs: asked for, on an fp16 build."""
        return self.fp16_guard and self.precision is Precision.FP16


class ExportOptions(BaseModel):
    """Which networks to export and how; recorded in the manifest. Which components a model
    has is checked when the model is read (export/build.py)."""

    model_config = ConfigDict(frozen=True)

    # None: the model's own (its text encoders, the UNet, both VAE halves).
    components: tuple[str, ...] | None = None
    opset: int = DEFAULT_OPSET
    # Merged into the text encoder and UNet weights before export, in this order.
    loras: tuple[LoraSource, ...] = ()
    # A single-file .ckpt is a pickle, which runs code when loaded: only when the user says so.
    allow_pickle: bool = False
