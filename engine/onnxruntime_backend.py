"""ONNX Runtime backend: the "build" saves ORT's optimised graph so that loading skips that work."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from sdtrt.engine.base import Engine
from sdtrt.engine.tensors import ComponentIO
from sdtrt.errors import ArtifactError, BackendUnavailable, EngineIncompatible

ENGINE_NAME = "engine.onnx"
CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
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


def choose_providers(available: list[str]) -> list[str]:
    """CUDA where this onnxruntime has it (the onnxruntime-gpu package on a GPU), else the CPU."""
    return [CUDA, CPU] if CUDA in available else [CPU]


def check_providers(recorded: list[str], available: list[str], path: Path) -> None:
    missing = [p for p in recorded if p not in available]
    if missing:
        raise EngineIncompatible(
            f"{path} was built for {', '.join(missing)}, which this onnxruntime lacks "
            f"(it has {', '.join(available)}); rebuild the engines here with `sdtrt build`"
        )


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
        providers = choose_providers(ort.get_available_providers())
        # Optimised for the providers it will run on: fusions differ between them.
        ort.InferenceSession(str(onnx_path), options, providers=providers)
        return ENGINE_NAME, {"providers": providers, "graph_optimization_level": LOAD_LEVEL}

    def load(self, name: str, path: Path, io: ComponentIO, settings: Mapping[str, Any]) -> Engine:
        return OrtEngine(name, path, io, settings)


class OrtEngine(Engine):
    """An ONNX Runtime session behind the Engine interface. Sessions run concurrently, safely."""

    def __init__(self, name: str, path: Path, io: ComponentIO, settings: Mapping[str, Any]) -> None:
        super().__init__(name, io)
        ort = _ort()
        providers = list(settings.get("providers", [CPU]))
        check_providers(providers, ort.get_available_providers(), path)
        options = ort.SessionOptions()
        options.graph_optimization_level = getattr(
            ort.GraphOptimizationLevel, settings.get("graph_optimization_level", LOAD_LEVEL)
        )
        try:
            self._session = ort.InferenceSession(str(path), options, providers=providers)
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
