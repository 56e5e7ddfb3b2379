"""Build settings: made by the CLI or an API caller, recorded in the manifest."""

from __future__ import annotations

from enum import Enum

from pydantic import BaseModel, ConfigDict


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


class GraphStyle(BaseModel):
    """How the exported graph is written for one backend: what its runtime fuses by itself and
    what it needs spelled out."""

    model_config = ConfigDict(frozen=True)

    # Attention as ONNX Runtime's MultiHeadAttention node (export/attention.py).
    fused_attention: bool = False
    # In fp16 graphs, normalisations computed in fp32 islands (export/precision.py); not for a
    # runtime whose fp16 normalisation kernels keep their statistics in fp32 anyway.
    fp32_norms: bool = True
    # ONNX Runtime's CUDA-only fused kernels (GroupNorm, NhwcConv, ...: export/cuda_fusions.py).
    cuda_fusions: bool = False


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
    # nodes that overflow or drift (export/fp16_guard.py); the VAE decoder is searched too
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

    @property
    def guarded(self) -> bool:
        """Whether the fp16 guard runs: asked for, on an fp16 build."""
        return self.fp16_guard and self.precision is Precision.FP16
