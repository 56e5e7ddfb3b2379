"""The backends an engine can be built with and loaded by, by name."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from sdtrt.engine import cuda
from sdtrt.engine.auto import AUTO, Choice, pick, probe
from sdtrt.engine.base import Engine
from sdtrt.engine.manifest import ComponentRecord, check_component_files
from sdtrt.engine.onnxruntime_backend import OnnxRuntimeBackend
from sdtrt.engine.onnxruntime_cuda import OnnxRuntimeCudaBackend
from sdtrt.engine.openvino_backend import OpenVinoBackend
from sdtrt.engine.openvino_devices import OpenVinoGpuBackend, OpenVinoNpuBackend
from sdtrt.engine.options import BuildOptions, GraphStyle, Precision
from sdtrt.engine.tensorrt_backend import TensorRtBackend
from sdtrt.engine.tensors import ComponentIO, Feeds
from sdtrt.errors import BackendUnavailable, InputError

log = logging.getLogger(__name__)


class Backend(Protocol):
    name: str
    # How the export is written for this backend (the default: plain ONNX, which the backend
    # fuses by itself or runs as is).
    graph_style: GraphStyle
    # Whether the device compiles one shape per input: the build then pins every shape to its
    # optimum (engine/ranges.py), so that the manifest and the request checks say so.
    fixed_shapes: bool

    def version(self) -> str:
        """The library's version; raises BackendUnavailable where this backend cannot run."""
        ...

    def build(
        self,
        onnx_path: Path,
        out_dir: Path,
        io: ComponentIO,
        options: BuildOptions,
        cache_dir: Path,
        calibration: Feeds = (),
    ) -> tuple[str, dict[str, Any]]:
        """Build `onnx_path` into `out_dir`: the engine file's name and its load settings.
        `cache_dir` holds what builds share (TensorRT's timing cache); `calibration`, the
        inputs a w8a8 build calibrates on (only OpenVINO builds w8a8; the others refuse it
        before a build starts)."""
        ...

    def load(
        self, name: str, path: Path, portable: Path, io: ComponentIO, settings: Mapping[str, Any]
    ) -> Engine:
        """Load the engine at `path`; `portable` is the exported ONNX it was built from."""
        ...

    def target(self) -> dict[str, str]:
        """What an engine built here is tied to (GPU model, library release, CPU features):
        part of the build key, so that a build for another target is never reused."""
        ...


BACKENDS: dict[str, Backend] = {
    backend.name: backend
    for backend in (
        OnnxRuntimeBackend(),
        OnnxRuntimeCudaBackend(),
        TensorRtBackend(),
        OpenVinoBackend(),
        OpenVinoGpuBackend(),
        OpenVinoNpuBackend(),
    )
}

# The backends whose engines run on NVIDIA GPUs through CUDA.
CUDA_BACKENDS = frozenset({"onnxruntime-cuda", "tensorrt"})


def get_backend(name: str) -> Backend:
    try:
        return BACKENDS[name]
    except KeyError:
        raise InputError(
            f"unknown backend '{name}'; choose one of: {', '.join(sorted([*BACKENDS, AUTO]))}"
        ) from None


def _ort_cuda_usable() -> object:
    """onnxruntime-gpu lists its CUDA provider with or without a GPU: look for one too."""
    version = BACKENDS["onnxruntime-cuda"].version()
    try:
        count = cuda.device_count()
    except BackendUnavailable:  # no cuda-bindings: the device nodes still tell
        count = int(Path("/dev/nvidia0").exists())
    if count == 0:
        raise BackendUnavailable("no NVIDIA GPU is visible here")
    return version


def auto_choice() -> Choice:
    """What `--backend auto` picks on this machine, and why."""
    versions = {name: backend.version for name, backend in BACKENDS.items()}
    return pick(probe({**versions, "onnxruntime-cuda": _ort_cuda_usable}))


def choose_backend(options: BuildOptions) -> Backend:
    """The backend a build runs on (`auto` resolved here), checked to support its precision."""
    if options.backend == AUTO:
        choice = auto_choice()
        log.info("backend auto: %s (%s)", choice.backend, choice.reason)
        backend = BACKENDS[choice.backend]
    else:
        backend = get_backend(options.backend)
    if isinstance(backend, OpenVinoBackend):
        backend.check_build(options)
    elif options.precision not in (Precision.FP32, Precision.FP16):
        raise InputError(
            f"--precision {options.precision.value} is for --backend openvino; {backend.name} "
            "computes in fp32 or fp16"
        )
    return backend


def load_component(directory: Path, record: ComponentRecord) -> Engine:
    """Open one built network of an engine directory, after checking its files are whole."""
    check_component_files(directory, record)
    return get_backend(record.backend).load(
        record.name, directory / record.engine, directory / record.onnx, record.io, record.settings
    )
