"""`--backend auto` and `--precision auto`: the fastest backend this machine can run, the
fastest precision that backend computes in well here, and why each was picked.

Both choices are pure functions of what is usable here (`pick`, `pick_precision`), so that every
case is tested without the hardware; `probe` finds out what is usable by asking each backend to
start.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from sdtrt.engine.base import DeviceKind
from sdtrt.engine.host import BF16_FLAGS
from sdtrt.engine.options import Precision
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


@dataclass(frozen=True)
class PrecisionChoice:
    precision: Precision
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
    no_gpu = "no GPU backend usable here" + ("" if precision == "auto" else f" for {precision}")
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


def pick_precision(
    backend: str,
    device: DeviceKind,
    fastest: Precision,
    precisions: frozenset[Precision],
    flags: Iterable[str],
) -> PrecisionChoice:
    """What `--precision auto` builds in on `backend`, and why: the fastest float precision it
    computes in on this machine (`fastest`, the backend's own `float_precision`): fp16 on GPUs
    and NPUs, the VAE as fp16's rules say; bf16 on a CPU with AVX-512 bf16 or AMX (twice fp32's
    speed or more), the VAE too; fp32 elsewhere. `precisions`: all it computes in; `flags`: the
    CPU's."""
    if fastest is Precision.FP16:
        return PrecisionChoice(
            fastest,
            f"{backend} computes fastest in fp16 on the {device.value}; the VAE stays fp32 "
            "unless --fp16-vae or --fp16-guard",
        )
    if fastest is Precision.BF16:
        native = ", ".join(sorted(set(flags) & set(BF16_FLAGS)))
        return PrecisionChoice(fastest, f"this CPU computes bf16 natively ({native}); the VAE too")
    if Precision.BF16 in precisions:
        return PrecisionChoice(
            fastest, f"this CPU has no bf16 instructions ({' or '.join(BF16_FLAGS)})"
        )
    return PrecisionChoice(fastest, f"{backend} computes fastest in {fastest.value} here")
