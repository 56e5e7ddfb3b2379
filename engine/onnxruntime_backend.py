"""ONNX Runtime backend: the "build" saves ORT's optimised graph so that loading skips that work.

On the CPU the saved graph includes ORT's hardware-specific layout pass (NCHWc blocked
convolutions), which is most of the optimisation time: an SD 1.5 UNet then loads in about a
second instead of ten to twenty. That layout depends on the CPU's vector width, so the engine
records the block size it was laid out for; on a CPU with another block size the runtime loads
the portable exported graph instead (slower to load, same results) and says so.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from sdtrt.engine.base import Engine
from sdtrt.engine.onnx_initializers import with_initializers
from sdtrt.engine.options import BuildOptions, GraphStyle
from sdtrt.engine.tensors import ComponentIO, Feeds
from sdtrt.errors import ArtifactError, BackendUnavailable, EngineIncompatible, first_line

log = logging.getLogger(__name__)

ENGINE_NAME = "engine.onnx"
CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
ALL = "ORT_ENABLE_ALL"
# Where a graph loaded from bytes finds its external data file.
EXTERNAL_FOLDER = "session.model_external_initializers_file_folder_path"
# Without the CPU layout pass a saved graph runs on any hardware the providers support.
PORTABLE = "ORT_ENABLE_EXTENDED"
# Saved graphs from this size on keep their weights in a file beside them: protobuf stops at
# 2 GB, and an fp16 graph optimised for the CPU can hold its weights again in fp32.
EXTERNAL_WEIGHTS_FROM = 2**30


def _ort() -> ModuleType:
    try:
        import onnxruntime
    except ImportError:
        raise BackendUnavailable(
            "onnxruntime is not installed; run `pip install onnxruntime`"
        ) from None
    return onnxruntime


def _graph_bytes(onnx_path: Path) -> int:
    """The graph's size with any weights kept beside it."""
    return sum(p.stat().st_size for p in onnx_path.parent.glob(onnx_path.name + "*"))


def saving_options(onnx_path: Path, out_dir: Path, level: str) -> Any:
    """Session options that optimise `onnx_path` at `level` and save the result as the engine
    in `out_dir`, its weights beside it when the graph is big."""
    ort = _ort()
    options = ort.SessionOptions()
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
    options.optimized_model_filepath = str(out_dir / ENGINE_NAME)
    if _graph_bytes(onnx_path) > EXTERNAL_WEIGHTS_FROM:
        options.add_session_config_entry(
            "session.optimized_model_external_initializers_file_name", ENGINE_NAME + ".data"
        )
        options.add_session_config_entry(
            "session.optimized_model_external_initializers_min_size_in_bytes", "1024"
        )
    return options


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
                _ort().set_default_logger_severity(self._severity)
            self._inside += 1

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            self._inside -= 1
            if self._inside == 0:
                _ort().set_default_logger_severity(self.USUAL)


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


@functools.cache
def _read_cpu_flags() -> frozenset[str]:
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def cpu_flags() -> set[str]:
    """The CPU's feature flags, from /proc/cpuinfo (read once per process: every build and
    load of a CPU engine asks); empty where that cannot be read."""
    return set(_read_cpu_flags())


def nchwc_block(flags: set[str]) -> int | None:
    """Channels per block in ORT's NCHWc layout on a CPU with `flags` (0: layout not used).

    None when the flags are unknown, so that no hardware-specific graph is trusted blindly."""
    if not flags:
        return None
    if "avx512f" in flags:
        return 16
    if "avx2" in flags and "fma" in flags:
        return 8
    return 0


def use_laid_out_graph(settings: Mapping[str, Any], block: int | None) -> bool:
    """Whether the saved graph suits this CPU; otherwise the portable graph must be loaded."""
    if "nchwc_block" not in settings:
        return True  # a portable save
    return block is not None and settings["nchwc_block"] == block


class OnnxRuntimeBackend:
    """ONNX Runtime on the CPU."""

    name = "onnxruntime"
    providers = [CPU]
    # One attention node (export/attention.py): ~1.6x faster than the plain ops for SD 1.5's
    # 4096-token self-attention on two AVX-512 cores, and no score tensor in memory.
    graph_style = GraphStyle(fused_attention=True)
    fixed_shapes = False

    def version(self) -> str:
        """onnxruntime's version; BackendUnavailable where it lacks this backend's providers."""
        ort = _ort()
        require_providers(self.providers, ort.get_available_providers())
        return str(ort.__version__)

    def build(
        self,
        onnx_path: Path,
        out_dir: Path,
        io: ComponentIO,
        options: BuildOptions,
        cache_dir: Path,
        calibration: Feeds = (),
    ) -> tuple[str, dict[str, Any]]:
        """Optimise `onnx_path` into `out_dir`; return the engine file name and load settings."""
        ort = _ort()
        block = nchwc_block(cpu_flags())
        laid_out = block is not None
        session_options = saving_options(onnx_path, out_dir, ALL if laid_out else PORTABLE)
        # ORT warns that a laid-out graph is hardware specific; the settings record for which.
        session_options.log_severity_level = 3
        ort.InferenceSession(str(onnx_path), session_options, providers=[CPU])
        settings: dict[str, Any] = {"providers": self.providers, "graph_optimization_level": ALL}
        if laid_out:
            settings["nchwc_block"] = block
        return ENGINE_NAME, settings

    def target(self) -> dict[str, str]:
        """What a saved graph is tied to: the CPU's vector width (its NCHWc block)."""
        return {"nchwc_block": str(nchwc_block(cpu_flags()))}

    def load(
        self, name: str, path: Path, portable: Path, io: ComponentIO, settings: Mapping[str, Any]
    ) -> Engine:
        if not use_laid_out_graph(settings, nchwc_block(cpu_flags())):
            log.warning(
                "%s was laid out for another CPU; loading its portable graph instead, which "
                "takes longer (rebuild the engines on this machine to load fast)",
                path,
            )
            path = portable
        return OrtEngine(name, path, io, settings)


class OrtEngine(Engine):
    """An ONNX Runtime session behind the Engine interface. Sessions run concurrently, safely."""

    def __init__(
        self,
        name: str,
        path: Path,
        io: ComponentIO,
        settings: Mapping[str, Any],
        *,
        initializers: Mapping[str, np.ndarray] | None = None,
    ) -> None:
        """`initializers` replace the graph's weights of those names (LoRA switching), before
        ORT optimises the graph (see onnx_initializers.with_initializers)."""
        super().__init__(name, io)
        ort = _ort()
        providers = list(settings.get("providers", [CPU]))
        check_providers(providers, ort.get_available_providers(), path)
        options = ort.SessionOptions()
        options.graph_optimization_level = getattr(
            ort.GraphOptimizationLevel, settings.get("graph_optimization_level", ALL)
        )
        model: str | bytes = str(path)
        self._initializers: list[Any] = []
        if initializers:
            model, external = with_initializers(path, initializers)
            self._initializers = [ort.OrtValue.ortvalue_from_numpy(a) for a in external.values()]
            if external:
                options.add_external_initializers(list(external), self._initializers)
            if isinstance(model, bytes):  # where the rest of an external-data graph lies
                options.add_session_config_entry(EXTERNAL_FOLDER, str(path.parent))
        try:
            self._session: Any = ort.InferenceSession(
                model, options, providers=self.provider_options(providers, settings)
            )
        except Exception as error:  # ORT raises its own untyped errors for bad files
            raise ArtifactError(
                f"{path} could not be loaded ({first_line(error)}); rebuild the engines with "
                "`sdtrt build`"
            ) from None
        require_started(providers, self._session.get_providers())
        self._output_names = [t.name for t in io.outputs]

    def provider_options(
        self, providers: list[str], settings: Mapping[str, Any]
    ) -> list[str | tuple[str, dict[str, str]]]:
        """The providers the session is made with, with their options where they need any."""
        return list(providers)

    def _run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        results = self._session.run(self._output_names, dict(feeds))
        return dict(zip(self._output_names, results, strict=True))

    def close(self) -> None:
        self._session = None
