"""The TensorRT backend: what `--backend tensorrt` builds and loads.

TensorRT and cuda-bindings are imported only when this backend is used, so a machine without
them imports sdtrt.engine.backends and learns what is missing only when it asks for TensorRT.
The work lives beside this file: build (the builder), engine (running an engine), memory
(scratch and per-call slots), io and host (decisions, tested without a GPU), refit (new
weights in a built engine).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from sdtrt.engine.base import DeviceKind, Engine
from sdtrt.engine.graph_style import GraphStyle
from sdtrt.engine.options import BuildOptions, Precision
from sdtrt.engine.tensorrt.gpu import require_gpu
from sdtrt.engine.tensors import ComponentIO, Feeds


class TensorRtBackend:
    name = "tensorrt"
    device_kind = DeviceKind.NVIDIA_GPU
    library = "tensorrt"
    precisions = frozenset({Precision.FP32, Precision.FP16})
    # TensorRT fuses the plain MatMul-Softmax-MatMul pattern itself, and its strongly typed
    # networks compute normalisations in the type the graph gives them.
    graph_style = GraphStyle()
    fixed_shapes = False

    def version(self) -> str:
        """TensorRT's version; raises BackendUnavailable without TensorRT or a GPU."""
        require_gpu()
        import tensorrt as trt

        return str(trt.__version__)

    def check_build(self, options: BuildOptions) -> None:
        """Nothing beyond its precisions: the builder's own limits are BuildOptions' bounds."""

    def float_precision(self) -> Precision:
        return Precision.FP16

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
        from sdtrt.engine.tensorrt.build import build_engine  # imports TensorRT

        return build_engine(onnx_path, out_dir, io, options, cache_dir, self.target())

    def load(
        self,
        name: str,
        path: Path,
        portable: Path,
        io: ComponentIO,
        settings: Mapping[str, Any],
        weights: Mapping[str, np.ndarray] | None = None,
    ) -> Engine:
        """With `weights`, the engine (built with `--refittable`) is loaded afresh, so that
        every weight left alone has its built value, and refitted in place."""
        from sdtrt.engine.tensorrt.engine import TrtEngine

        engine = TrtEngine(name, path, io, settings)
        if weights:
            try:
                engine.refit(weights)
            except BaseException:
                engine.close()
                raise
        return engine
