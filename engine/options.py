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
    computing the rest in bfloat16 where the CPU has it. AUTO is the fastest of these the backend
    computes in well on this machine (engine/auto.py), resolved before anything is built."""

    AUTO = "auto"
    FP32 = "fp32"
    FP16 = "fp16"
    BF16 = "bf16"
    INT8 = "int8"
    W8A8 = "w8a8"


# Precisions whose builds put the VAE in their float precision unless told otherwise: bfloat16
# keeps fp32's exponent range, so the overflow that keeps VAEs out of fp16 does not arise, and its
# decode measured >= 45 dB from fp32's on the SD 1.5 and SDXL VAEs (docs/backends.md).
VAE_FOLLOWS_BY_DEFAULT = frozenset({Precision.BF16, Precision.W8A8})


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
    precision: Precision = Precision.AUTO
    # The VAE in the build's reduced float precision too: by default (None) under bf16 and w8a8
    # (bf16 has fp32's range: no overflow), not under fp16 (Stable Diffusion VAEs overflow it)
    # unless the model's VAE is known to be safe. See export/precision.py.
    fp16_vae: bool | None = None
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
        if self.fp16_guard and self.precision not in (Precision.FP16, Precision.AUTO):
            raise InputError(
                "--fp16-guard checks fp16 graphs; add --precision fp16 "
                f"(got {self.precision.value})"
            )
        return self

    @property
    def guarded(self) -> bool:
        """Whether the fp16 guard runs: asked for, on an fp16 build."""
        return self.fp16_guard and self.precision is Precision.FP16

    @property
    def reduced_vae(self) -> bool:
        """Whether the VAE computes in the build's reduced precision (`fp16_vae`, else the
        precision's default: see export/precision.py) or, guarded, where the guard finds it
        safe."""
        if self.fp16_vae is not None:
            return self.fp16_vae or self.guarded
        return self.precision in VAE_FOLLOWS_BY_DEFAULT or self.guarded


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
    # An AutoencoderTiny (folder, hub id or tiny VAE preset) built beside the model's own VAE.
    tiny_vae: str | None = None
    # ControlNets (folders, hub ids or ControlNet presets) built beside the model, in order.
    controlnets: tuple[str, ...] = ()
