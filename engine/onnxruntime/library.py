"""The onnxruntime library as sdtrt uses it: imported on demand, its providers checked, its
default logger quieted where its notices say nothing to a user, its CUDA libraries loaded.

Shared by the ONNX Runtime backends and by the tools that run graphs on ONNX Runtime outside a
backend (constant folding at export, every tensor compared by the fp16 guard and `sdtrt debug
compare`).
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

from sdtrt.errors import BackendUnavailable, EngineIncompatible

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"


def ort() -> ModuleType:
    try:
        import onnxruntime
    except ImportError as error:
        raise BackendUnavailable(
            "onnxruntime is not installed; run `pip install onnxruntime`"
        ) from error
    return onnxruntime


class QuietDefaultLogger:
    """ONNX Runtime's default logger held at `severity` while any holder is inside, back to
    ONNX Runtime's usual level when the last one leaves (threads may overlap)."""

    ERROR, FATAL, USUAL = 3, 4, 2  # ONNX Runtime's severities; 2 (warning) is its default

    def __init__(self, severity: int) -> None:
        self._severity = severity
        self._lock = threading.Lock()
        self._inside = 0

    def __enter__(self) -> None:
        with self._lock:
            if self._inside == 0:
                ort().set_default_logger_severity(self._severity)
            self._inside += 1

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            self._inside -= 1
            if self._inside == 0:
                ort().set_default_logger_severity(self.USUAL)


def require_providers(wanted: list[str], available: list[str]) -> None:
    """Before a build: this onnxruntime must have the backend's providers."""
    missing = [p for p in wanted if p not in available]
    if missing:
        raise BackendUnavailable(
            f"this onnxruntime has no {', '.join(missing)} (it has {', '.join(available)}); "
            "for CUDA, on a machine with an NVIDIA GPU, replace onnxruntime with onnxruntime-gpu "
            "(`pip uninstall -y onnxruntime && pip install onnxruntime-gpu`)"
        )


def check_providers(recorded: list[str], available: list[str], path: Path) -> None:
    """Before a load: the engine at `path` was built for providers this onnxruntime has."""
    missing = [p for p in recorded if p not in available]
    if missing:
        raise EngineIncompatible(
            f"{path} was built for {', '.join(missing)}, which this onnxruntime lacks "
            f"(it has {', '.join(available)}); rebuild the engines here with `sdtrt build`"
        )


def require_started(wanted: list[str], started: list[str]) -> None:
    """After a session is made: ONNX Runtime falls back to the CPU, with only a logged error,
    when a provider's libraries fail to load; an engine built for the GPU must not quietly run
    on the CPU instead."""
    missing = [p for p in wanted if p not in started]
    if missing:
        raise BackendUnavailable(
            f"onnxruntime could not start {', '.join(missing)} (see its error above): "
            "onnxruntime-gpu needs the CUDA runtime, cuBLAS and cuDNN 9 of the CUDA major it was "
            "built for, from the nvidia-* pip packages in its environment or the library path"
        )


def cuda_provider_options(settings: Mapping[str, Any]) -> dict[str, str]:
    """The CUDA provider's options for an engine built with `settings`.

    - TF32 off: the provider rounds fp32 matmul and convolution inputs to 10 bits by default,
      which breaks fp32's 1e-4 parity; the fp32 islands of an fp16 graph need fp32 too.
    - Exhaustive cuDNN convolution search with its largest workspace: a denoising loop runs the
      same few convolution shapes thousands of times, so the one-off search pays for itself.
    - CUDA graphs for `--static` engines (one image size): each input shape set is recorded
      once, then every step is one replay.
    """
    options = {
        "use_tf32": "0",
        "cudnn_conv_algo_search": "EXHAUSTIVE",
        "cudnn_conv_use_max_workspace": "1",
    }
    if settings.get("cuda_graph"):
        options["enable_cuda_graph"] = "1"
    return options


@functools.cache
def load_cuda_libraries() -> None:
    """Load CUDA and cuDNN from the nvidia-* pip packages beside onnxruntime-gpu, once.

    The CUDA provider finds them only through the loader's search path, which pip's packages are
    not on unless torch loaded them first, and sdtrt's runtime imports no torch. onnxruntime-gpu
    >= 1.21 has `preload_dlls` for this; libraries already on the path load as before."""
    preload = getattr(ort(), "preload_dlls", None)
    if preload is not None:
        preload()
