"""The backends an engine can be built with and loaded by, by name."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from sdtrt.engine.base import Engine
from sdtrt.engine.manifest import ComponentRecord, check_component_files
from sdtrt.engine.onnxruntime_backend import OnnxRuntimeBackend, OnnxRuntimeCudaBackend
from sdtrt.engine.options import BuildOptions
from sdtrt.engine.tensorrt_backend import TensorRtBackend
from sdtrt.engine.tensors import ComponentIO
from sdtrt.errors import InputError


class Backend(Protocol):
    name: str

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
    ) -> tuple[str, dict[str, Any]]:
        """Build `onnx_path` into `out_dir`: the engine file's name and its load settings.
        `cache_dir` holds what builds share (TensorRT's timing cache)."""
        ...

    def load(
        self, name: str, path: Path, portable: Path, io: ComponentIO, settings: Mapping[str, Any]
    ) -> Engine:
        """Load the engine at `path`; `portable` is the exported ONNX it was built from."""
        ...


BACKENDS: dict[str, Backend] = {
    backend.name: backend
    for backend in (OnnxRuntimeBackend(), OnnxRuntimeCudaBackend(), TensorRtBackend())
}


def get_backend(name: str) -> Backend:
    try:
        return BACKENDS[name]
    except KeyError:
        raise InputError(
            f"unknown backend '{name}'; choose one of: {', '.join(sorted(BACKENDS))}"
        ) from None


def load_component(directory: Path, record: ComponentRecord) -> Engine:
    """Open one built network of an engine directory, after checking its files are whole."""
    check_component_files(directory, record)
    return get_backend(record.backend).load(
        record.name, directory / record.engine, directory / record.onnx, record.io, record.settings
    )
