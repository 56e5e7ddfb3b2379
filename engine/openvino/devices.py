"""OpenVINO on Intel GPUs and NPUs: the CPU backend's build and engine, on another device.

`openvino-gpu` runs on an Intel GPU (integrated or Arc) that OpenVINO sees: fp32, fp16 (its GPU
plugin's own default) or int8 weights, no bf16; the compiled model is tied to the GPU model and
driver rather than to CPU instruction sets. `openvino-npu` runs on an Intel NPU (Core Ultra),
whose plugin compiles fixed shapes only: `--static` builds, compiled for the optimum shapes
alone, in fp16 or with int8 weights. Neither is picked by `--backend auto`.
"""

from __future__ import annotations

from sdtrt.engine.base import DeviceKind
from sdtrt.engine.openvino.cpu import HINTS, OpenVinoBackend
from sdtrt.engine.openvino.engine import GPU, NPU, shared_core
from sdtrt.engine.options import BuildOptions, Precision
from sdtrt.errors import InputError


class OpenVinoGpuBackend(OpenVinoBackend):
    """OpenVINO on an Intel GPU. Not picked by `--backend auto`: an integrated GPU is not always
    faster than the CPU beside it; name it to use it."""

    name = "openvino-gpu"
    device_kind = DeviceKind.INTEL_GPU
    precisions = frozenset({Precision.FP32, Precision.FP16, Precision.INT8})
    device = GPU

    def float_precision(self) -> Precision:
        return Precision.FP16  # the GPU plugin's own default

    def check_precision(self, precision: Precision) -> None:
        if precision in (Precision.BF16, Precision.W8A8):
            raise InputError(
                "OpenVINO's GPU plugin computes in fp32 or fp16 (or with int8 weights) here, "
                f"not {precision.value}; use --precision fp16"
            )

    def target(self) -> dict[str, str]:
        """The device's model (its driver is OpenVINO's plugin, part of the version)."""
        return {
            "device": self.device,
            self.device.lower(): str(shared_core().get_property(self.device, "FULL_DEVICE_NAME")),
        }

    def features(self) -> list[str]:
        return []  # kernels are compiled for the GPU, not for this CPU


class OpenVinoNpuBackend(OpenVinoGpuBackend):
    """OpenVINO on an Intel NPU. Its plugin compiles fixed shapes only: a `--static` build,
    whose every shape is pinned to its optimum (the guided batch of `--max-batch` images at
    `--opt-size`, one prompt chunk) and nothing else. Not picked by `--backend auto`; name it
    to use it."""

    name = "openvino-npu"
    device_kind = DeviceKind.INTEL_NPU
    precisions = frozenset({Precision.FP16, Precision.INT8})
    device = NPU
    fixed_shapes = True

    def check_build(self, options: BuildOptions) -> None:
        super().check_build(options)
        if not options.static:
            raise InputError(
                "OpenVINO's NPU plugin compiles fixed shapes only; build with --static "
                "--opt-size HxW --max-batch N (N images per call, with guidance)"
            )
        if not options.reduced_vae:
            raise InputError(
                "OpenVINO's NPU plugin computes in fp16 only, and the VAE stays fp32 unless "
                "asked; add --fp16-vae for a VAE that is safe in fp16 (or --fp16-guard)"
            )

    def check_precision(self, precision: Precision) -> None:
        if precision not in (Precision.FP16, Precision.INT8):
            raise InputError(
                "OpenVINO's NPU plugin computes in fp16 (or with int8 weights), not "
                f"{precision.value}; use --precision fp16"
            )

    def inference_hint(self, precision: Precision) -> str:
        return HINTS[Precision.FP16]  # int8 weights too: the NPU computes in fp16
