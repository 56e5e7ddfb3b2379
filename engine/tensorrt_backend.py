"""The TensorRT backend: what `--backend tensorrt` builds and loads.

TensorRT and cuda-bindings are imported only when this backend is used, so a machine without
them imports sdtrt.engine.backends and learns what is missing only when it asks for TensorRT.
The work lives beside this file: trt_build (the builder), trt_engine (running an engine),
trt_memory (scratch and per-call slots), trt_io and trt_host (decisions, tested without a GPU).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sdtrt.engine import cuda
from sdtrt.engine.base import Engine
from sdtrt.engine.options import BuildOptions, GraphStyle
from sdtrt.engine.tensors import ComponentIO, Feeds
from sdtrt.errors import BackendUnavailable


def require_gpu() -> dict[str, Any]:
    """The GPU TensorRT will use; BackendUnavailable without TensorRT, CUDA or a usable GPU."""
    spec = importlib.util.find_spec("tensorrt")
    if spec is None or spec.origin is None:  # type stubs alone leave an empty namespace package
        raise BackendUnavailable(
            "TensorRT is not installed; run `pip install 'sdtrt[tensorrt]'` on a machine with an "
            "NVIDIA GPU (`sdtrt doctor` shows what is missing)"
        )
    cuda.require()
    if cuda.device_count() == 0:  # raises with CUDA's own words where the GPU is unusable
        raise BackendUnavailable("TensorRT needs an NVIDIA GPU, and none is visible here")
    return cuda.device_properties(0)


class TensorRtBackend:
    name = "tensorrt"
    # TensorRT fuses the plain MatMul-Softmax-MatMul pattern itself, and its strongly typed
    # networks compute normalisations in the type the graph gives them.
    graph_style = GraphStyle()
    fixed_shapes = False

    def version(self) -> str:
        """TensorRT's version; raises BackendUnavailable without TensorRT or a GPU."""
        require_gpu()
        import tensorrt as trt

        return str(trt.__version__)

    def target(self) -> dict[str, str]:
        """What an engine built here is specific to: the GPU model, its compute capability and
        the TensorRT release. Engines built for another target must be rebuilt."""
        gpu = require_gpu()
        import tensorrt as trt

        return {
            "gpu_name": str(gpu["name"]),
            "compute_capability": str(gpu["compute_capability"]),
            "tensorrt_version": str(trt.__version__),
        }

    def build(
        self,
        onnx_path: Path,
        out_dir: Path,
        io: ComponentIO,
        options: BuildOptions,
        cache_dir: Path,
        calibration: Feeds = (),
    ) -> tuple[str, dict[str, Any]]:
        from sdtrt.engine.trt_build import build_engine

        return build_engine(onnx_path, out_dir, io, options, cache_dir, self.target())

    def load(
        self, name: str, path: Path, portable: Path, io: ComponentIO, settings: Mapping[str, Any]
    ) -> Engine:
        from sdtrt.engine.trt_engine import TrtEngine

        return TrtEngine(name, path, io, settings)
