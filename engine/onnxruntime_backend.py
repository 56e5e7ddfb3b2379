"""ONNX Runtime backend: the "build" saves ORT's optimised graph so that loading skips that work."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
from sdtrt.engine.base import Engine
from sdtrt.engine.tensors import ComponentIO
from sdtrt.errors import ArtifactError, BackendUnavailable

ENGINE_NAME = "engine.onnx"
PROVIDERS = ["CPUExecutionProvider"]
# Saved graphs stop at the portable "extended" level; the hardware-specific layout passes of
# "all" run when the engine loads, so an engine directory moves between CPUs safely.
SAVE_LEVEL = "ORT_ENABLE_EXTENDED"
LOAD_LEVEL = "ORT_ENABLE_ALL"


def _ort() -> ModuleType:
    try:
        import onnxruntime
    except ImportError:
        raise BackendUnavailable(
            "onnxruntime is not installed; run `pip install onnxruntime`"
        ) from None
    return onnxruntime


class OnnxRuntimeBackend:
    name = "onnxruntime"

    def version(self) -> str:
        return str(_ort().__version__)

    def build(self, onnx_path: Path, out_dir: Path) -> tuple[str, dict[str, Any]]:
        """Optimise `onnx_path` into `out_dir`; return the engine file name and load settings."""
        ort = _ort()
        options = ort.SessionOptions()
        options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, SAVE_LEVEL)
        options.optimized_model_filepath = str(out_dir / ENGINE_NAME)
        if any(p.suffix == ".data" for p in onnx_path.parent.iterdir()):
            # Graphs over protobuf's 2 GB limit must keep their weights beside the graph.
            options.add_session_config_entry(
                "session.optimized_model_external_initializers_file_name", ENGINE_NAME + ".data"
            )
            options.add_session_config_entry(
                "session.optimized_model_external_initializers_min_size_in_bytes", "1024"
            )
        ort.InferenceSession(str(onnx_path), options, providers=PROVIDERS)
        return ENGINE_NAME, {"providers": PROVIDERS, "graph_optimization_level": LOAD_LEVEL}

    def load(self, name: str, path: Path, io: ComponentIO, settings: Mapping[str, Any]) -> Engine:
        return OrtEngine(name, path, io, settings)


class OrtEngine(Engine):
    """An ONNX Runtime session behind the Engine interface. Sessions run concurrently, safely."""

    def __init__(self, name: str, path: Path, io: ComponentIO, settings: Mapping[str, Any]) -> None:
        super().__init__(name, io)
        ort = _ort()
        options = ort.SessionOptions()
        options.graph_optimization_level = getattr(
            ort.GraphOptimizationLevel, settings.get("graph_optimization_level", LOAD_LEVEL)
        )
        try:
            self._session = ort.InferenceSession(
                str(path), options, providers=list(settings.get("providers", PROVIDERS))
            )
        except Exception as error:  # ORT raises its own untyped errors for bad files
            reason = str(error).strip().splitlines()[0][:200]
            raise ArtifactError(
                f"{path} could not be loaded ({reason}); rebuild the engines with `sdtrt build`"
            ) from None
        self._output_names = [t.name for t in io.outputs]

    def _run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        results = self._session.run(self._output_names, dict(feeds))
        return dict(zip(self._output_names, results, strict=True))

    def close(self) -> None:
        self._session = None
