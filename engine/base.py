"""The two contracts of the engine layer: an Engine (one built network, called with numpy
arrays) and a Backend (what builds and loads engines). Callers name backends only through the
registry (engine/backends.py) and reach them only through these."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from enum import Enum
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

import numpy as np

from sdtrt.engine.graph_style import GraphStyle
from sdtrt.engine.options import BuildOptions, Precision
from sdtrt.engine.tensors import ComponentIO, Feeds, TensorSpec, check_feeds


class Engine(ABC):
    """One built network. `infer` checks its feeds against `io` and returns fresh arrays.

    Outputs never alias buffers the engine reuses, so callers may keep them across calls.

    Engines are safe to call from several threads at once, and such calls run side by side, so
    that one loaded engine can serve several threads (`sdtrt serve`'s workers share one
    pipeline). A GPU engine gives each call in flight its own execution state (TensorRT: an
    execution context, a stream, I/O buffers and activation scratch), made when every existing
    one is busy and kept for later calls, so its memory grows with the most calls ever run at
    once. A GPU
    engine may keep an input on the device between calls when it is passed again as the very
    same read-only array; make an array read-only (`array.setflags(write=False)`) only when its
    contents will not change.

    `close()` frees the engine's memory; call it once no call is running. Closing again does
    nothing, and an engine that is never closed frees its memory when garbage-collected.
    """

    def __init__(self, name: str, io: ComponentIO) -> None:
        self.name = name
        self.io = io

    @property
    def inputs(self) -> tuple[TensorSpec, ...]:
        return self.io.inputs

    @property
    def outputs(self) -> tuple[TensorSpec, ...]:
        return self.io.outputs

    def infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        check_feeds(self.name, self.io, feeds)
        return self._run(feeds)

    @abstractmethod
    def _run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the network on feeds already checked against `io`."""

    @abstractmethod
    def close(self) -> None:
        """Release the backend's resources; the engine is unusable afterwards."""

    def __enter__(self) -> Engine:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class DeviceKind(str, Enum):
    """What a backend's engines run on."""

    CPU = "cpu"
    NVIDIA_GPU = "nvidia-gpu"
    INTEL_GPU = "intel-gpu"
    INTEL_NPU = "intel-npu"

    @property
    def is_gpu(self) -> bool:
        return self in (DeviceKind.NVIDIA_GPU, DeviceKind.INTEL_GPU)


class Backend(Protocol):
    """What builds and loads engines of one kind. Every backend implements all of it; where a
    backend cannot do something asked of it, it says so in one line (InputError for what the
    user asked, BackendUnavailable for what this machine lacks), before any work."""

    name: str
    device_kind: DeviceKind
    # The inference library its engines run on ("onnxruntime", "openvino", "tensorrt"): the
    # benchmark names its peers by library.
    library: str
    # What its engines can compute in; the registry refuses any other precision up front.
    precisions: frozenset[Precision]
    # How the export is written for this backend (plain ONNX unless it runs fused nodes).
    graph_style: GraphStyle
    # Whether the device compiles one shape per input: the build then pins every shape to its
    # optimum (engine/ranges.py), so that the manifest and the request checks say so.
    fixed_shapes: bool

    def version(self) -> str:
        """The library's version; raises BackendUnavailable where this backend cannot run."""
        ...

    def check_build(self, options: BuildOptions) -> None:
        """Refuse, in one line, a build this backend cannot make here (beyond the precisions
        it lacks, which the registry refuses): before any work, not after minutes of it."""
        ...

    def float_precision(self) -> Precision:
        """The fastest floating-point precision its engines compute in on this machine: what a
        w8a8 build computes the networks it does not quantize in."""
        ...

    def target(self) -> dict[str, str]:
        """What an engine built here is tied to (GPU model, library release, CPU features):
        part of the build key, so that a build for another target is never reused."""
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
        inputs a w8a8 build calibrates on."""
        ...

    def load(
        self,
        name: str,
        path: Path,
        portable: Path,
        io: ComponentIO,
        settings: Mapping[str, Any],
        weights: Mapping[str, np.ndarray] | None = None,
    ) -> Engine:
        """Load the engine at `path`; `portable` is the exported ONNX it was built from. With
        `weights`, the initializers of those names replaced (LoRA switching): every other
        weight is the built one, whatever was switched before."""
        ...
