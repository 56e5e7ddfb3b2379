"""`--backend auto`: the fastest backend this machine can run, and why it was picked.

The choice is a pure function of what is usable here (`pick`), so that every case is tested
without the hardware; `probe` finds out what is usable by asking each backend to start.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from sdtrt.errors import SdtrtError

AUTO = "auto"


@dataclass(frozen=True)
class Availability:
    """Per backend, None where it can run here, else the one-line reason it cannot."""

    tensorrt: str | None
    onnxruntime_cuda: str | None
    openvino: str | None
    onnxruntime: str | None


@dataclass(frozen=True)
class Choice:
    backend: str
    reason: str


def pick(available: Availability, precision: str = "fp32") -> Choice:
    """TensorRT on an NVIDIA GPU, else ONNX Runtime's CUDA provider, else OpenVINO on the CPU,
    else ONNX Runtime on the CPU: fastest first, as measured on the machines sdtrt targets.
    A backend that cannot make the build asked (in `precision`, say) counts as not usable."""
    if available.tensorrt is None:
        return Choice("tensorrt", "TensorRT and an NVIDIA GPU are usable")
    if available.onnxruntime_cuda is None:
        return Choice(
            "onnxruntime-cuda",
            f"an NVIDIA GPU and onnxruntime-gpu are usable; TensorRT is not ({available.tensorrt})",
        )
    no_gpu = f"no GPU backend usable here for {precision}"
    if available.openvino is None:
        return Choice("openvino", f"{no_gpu}; OpenVINO is installed and sees the CPU")
    if available.onnxruntime is None:
        return Choice("onnxruntime", f"{no_gpu}, nor OpenVINO ({available.openvino})")
    raise SdtrtError(
        "no backend can run here: "
        f"onnxruntime: {available.onnxruntime}; openvino: {available.openvino}"
    )


def _problem(start: Callable[[], object]) -> str | None:
    try:
        start()
    except SdtrtError as error:
        return str(error)
    return None


def probe(versions: Mapping[str, Callable[[], object]]) -> Availability:
    """What is usable here: each backend's `version()`, which raises where it cannot run."""
    return Availability(
        tensorrt=_problem(versions["tensorrt"]),
        onnxruntime_cuda=_problem(versions["onnxruntime-cuda"]),
        openvino=_problem(versions["openvino"]),
        onnxruntime=_problem(versions["onnxruntime"]),
    )
