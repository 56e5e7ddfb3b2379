"""ONNX Runtime on the CPU: the "build" saves ORT's optimised graph so that loading skips that work.

On the CPU the saved graph includes ORT's hardware-specific layout pass (NCHWc blocked
convolutions), which is most of the optimisation time: an SD 1.5 UNet then loads in about a
second instead of ten to twenty. That layout depends on the CPU's vector width, so the engine
records the block size it was laid out for; on a CPU with another block size the runtime loads
the portable exported graph instead (slower to load, same results) and says so.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from sdtrt.engine.base import DeviceKind, Engine
from sdtrt.engine.graph_style import GraphStyle
from sdtrt.engine.host import cpu_flags
from sdtrt.engine.onnxruntime.library import (
    CPU,
    check_providers,
    ort,
    require_providers,
    require_started,
)
from sdtrt.engine.options import BuildOptions, Precision
from sdtrt.engine.tensors import ComponentIO, Feeds
from sdtrt.engine.weights.initializers import with_initializers
from sdtrt.errors import ArtifactError, first_line

log = logging.getLogger(__name__)

ENGINE_NAME = "engine.onnx"
ALL = "ORT_ENABLE_ALL"
# Where a graph loaded from bytes finds its external data file.
EXTERNAL_FOLDER = "session.model_external_initializers_file_folder_path"
# Without the CPU layout pass a saved graph runs on any hardware the providers support.
PORTABLE = "ORT_ENABLE_EXTENDED"
# Saved graphs from this size on keep their weights in a file beside them: protobuf stops at
# 2 GB, and an fp16 graph optimised for the CPU can hold its weights again in fp32.
EXTERNAL_WEIGHTS_FROM = 2**30


def _graph_bytes(onnx_path: Path) -> int:
    """The graph's size with any weights kept beside it."""
    return sum(p.stat().st_size for p in onnx_path.parent.glob(onnx_path.name + "*"))


def saving_options(onnx_path: Path, out_dir: Path, level: str) -> Any:
    """Session options that optimise `onnx_path` at `level` and save the result as the engine
    in `out_dir`, its weights beside it when the graph is big."""
    library = ort()
    options = library.SessionOptions()
    options.graph_optimization_level = getattr(library.GraphOptimizationLevel, level)
    options.optimized_model_filepath = str(out_dir / ENGINE_NAME)
    # The session only optimises and saves: packing the weights for its kernels as well would
    # hold a second copy of them (an SDXL UNet's build peaked at 19.1 GiB with it, 10.7 without).
    options.add_session_config_entry("session.disable_prepacking", "1")
    if _graph_bytes(onnx_path) > EXTERNAL_WEIGHTS_FROM:
        options.add_session_config_entry(
            "session.optimized_model_external_initializers_file_name", ENGINE_NAME + ".data"
        )
        options.add_session_config_entry(
            "session.optimized_model_external_initializers_min_size_in_bytes", "1024"
        )
    return options


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
    device_kind = DeviceKind.CPU
    library = "onnxruntime"
    precisions = frozenset({Precision.FP32, Precision.FP16})
    providers = [CPU]
    # One attention node (export/attention.py): ~1.6x faster than the plain ops for SD 1.5's
    # 4096-token self-attention on two AVX-512 cores, and no score tensor in memory.
    graph_style = GraphStyle(fused_attention=True)
    fixed_shapes = False

    def version(self) -> str:
        """onnxruntime's version; BackendUnavailable where it lacks this backend's providers."""
        library = ort()
        require_providers(self.providers, library.get_available_providers())
        return str(library.__version__)

    def check_build(self, options: BuildOptions) -> None:
        """Nothing beyond its precisions: ONNX Runtime builds any shape range."""

    def float_precision(self) -> Precision:
        return Precision.FP32

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
        block = nchwc_block(cpu_flags())
        laid_out = block is not None
        session_options = saving_options(onnx_path, out_dir, ALL if laid_out else PORTABLE)
        # ORT warns that a laid-out graph is hardware specific; the settings record for which.
        session_options.log_severity_level = 3
        ort().InferenceSession(str(onnx_path), session_options, providers=[CPU])
        settings: dict[str, Any] = {"providers": self.providers, "graph_optimization_level": ALL}
        if laid_out:
            settings["nchwc_block"] = block
        return ENGINE_NAME, settings

    def target(self) -> dict[str, str]:
        """What a saved graph is tied to: the CPU's vector width (its NCHWc block)."""
        return {"nchwc_block": str(nchwc_block(cpu_flags()))}

    def load(
        self,
        name: str,
        path: Path,
        portable: Path,
        io: ComponentIO,
        settings: Mapping[str, Any],
        weights: Mapping[str, np.ndarray] | None = None,
    ) -> Engine:
        if weights:
            # A new session on the export with those initializers overridden: ORT optimises
            # the graph as it loads, which is a switch's main cost. The export, not the saved
            # engine: ORT lays the CPU engine's weights out for this CPU (NCHWc blocks), and
            # the export is what the weight map names.
            settings = {k: v for k, v in settings.items() if k != "nchwc_block"}
            return OrtEngine(name, portable, io, settings, initializers=weights)
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
        ORT optimises the graph (see weights.initializers.with_initializers)."""
        super().__init__(name, io)
        library = ort()
        providers = list(settings.get("providers", [CPU]))
        check_providers(providers, library.get_available_providers(), path)
        options = library.SessionOptions()
        options.graph_optimization_level = getattr(
            library.GraphOptimizationLevel, settings.get("graph_optimization_level", ALL)
        )
        model: str | bytes = str(path)
        self._initializers: list[Any] = []
        if initializers:
            model, external = with_initializers(path, initializers)
            self._initializers = [
                library.OrtValue.ortvalue_from_numpy(a) for a in external.values()
            ]
            if external:
                options.add_external_initializers(list(external), self._initializers)
            if isinstance(model, bytes):  # where the rest of an external-data graph lies
                options.add_session_config_entry(EXTERNAL_FOLDER, str(path.parent))
        try:
            self._session: Any = library.InferenceSession(
                model, options, providers=self.provider_options(providers, settings)
            )
        except Exception as error:  # ORT raises its own untyped errors for bad files
            raise ArtifactError(
                f"{path} could not be loaded ({first_line(error)}); rebuild the engines with "
                "`sdtrt build`"
            ) from error
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
