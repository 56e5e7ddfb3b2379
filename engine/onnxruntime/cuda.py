"""ONNX Runtime on an NVIDIA GPU (the onnxruntime-gpu package), through IO binding.

The engine is the export after ONNX Runtime's basic (provider-independent) optimisations, saved
by a CUDA session: a graph saved by a session holds what its providers needed, and a CPU
session's has Casts to fp32 around every fp16 node the CPU has no kernel for, with fp32 copies of
their weights, which the GPU would then compute in fp32. Loading the saved graph skips those
optimisations (on an H200, 0.9 s instead of 3.8 s for SD 1.5's UNet). Graphs saved at higher
levels hold nodes fused for one provider, which ONNX Runtime does not always load again
(onnxruntime issue 11348); should the saved graph not load, the export is loaded instead.

The provider's options are chosen, not left to its defaults (see `cuda_provider_options`).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from sdtrt.engine.base import DeviceKind, Engine
from sdtrt.engine.graph_style import GraphStyle
from sdtrt.engine.host import nvidia_gpu_count
from sdtrt.engine.onnxruntime.cpu import (
    ALL,
    ENGINE_NAME,
    OnnxRuntimeBackend,
    OrtEngine,
    saving_options,
)
from sdtrt.engine.onnxruntime.library import (
    CPU,
    CUDA,
    QuietDefaultLogger,
    cuda_provider_options,
    load_cuda_libraries,
    ort,
    require_started,
)
from sdtrt.engine.options import BuildOptions, Precision
from sdtrt.engine.tensors import ComponentIO, Feeds
from sdtrt.errors import ArtifactError, BackendUnavailable

log = logging.getLogger(__name__)
# Provider-independent optimisations only (constant folding, redundant nodes): see above.
BASIC = "ORT_ENABLE_BASIC"

# At the first run of each input shape, ONNX Runtime's CUDA convolutions log one error per
# convolution that cuDNN's frontend has no execution plan for, then carry on with another
# algorithm: 97 lines for SD 1.5's UNet on an H200 (onnxruntime-gpu 1.31.1), whose outputs were
# right. Those first runs are quiet; failures that matter come back as exceptions, and session
# start-up, where a missing CUDA library is reported, and later runs keep the usual level.
QUIET_CUDNN_FALLBACKS = QuietDefaultLogger(QuietDefaultLogger.FATAL)
# A session that records CUDA graphs warns, as it starts, that the graph's shape computations
# run on the CPU and are not recorded: harmless here, since each set of input shapes has its
# own graph and those computations depend on the input shapes alone. Errors still show.
QUIET_GRAPH_NOTICE = QuietDefaultLogger(QuietDefaultLogger.ERROR)


class OnnxRuntimeCudaBackend(OnnxRuntimeBackend):
    name = "onnxruntime-cuda"
    device_kind = DeviceKind.NVIDIA_GPU
    providers = [CUDA, CPU]
    # Flash attention for the fused node, fp16 normalisations (the CUDA kernels of the
    # normalisations accumulate in fp32 themselves), and ONNX Runtime's fused diffusion kernels.
    # On an H200 (SD 1.5, 512x512, batch 2, CUDA graph) the UNet call took 25.9 ms with plain
    # attention, 15.8 ms fused, 14.4 ms fused with fp16 normalisations and 7.7 ms with the fused
    # kernels too, for the same error against torch.
    graph_style = GraphStyle(fused_attention=True, fp32_norms=False, cuda_fusions=True)

    def version(self) -> str:
        """onnxruntime-gpu's version, where it has its CUDA provider and a GPU is visible:
        onnxruntime-gpu lists the provider with or without a GPU."""
        version = super().version()
        if nvidia_gpu_count() == 0:
            raise BackendUnavailable("no NVIDIA GPU is visible here")
        return version

    def float_precision(self) -> Precision:
        return Precision.FP16

    def build(
        self,
        onnx_path: Path,
        out_dir: Path,
        io: ComponentIO,
        options: BuildOptions,
        cache_dir: Path,
        calibration: Feeds = (),
    ) -> tuple[str, dict[str, Any]]:
        """Save the export after the basic optimisations, from a CUDA session (see above)."""
        load_cuda_libraries()
        session_options = saving_options(onnx_path, out_dir, BASIC)
        providers = [(CUDA, cuda_provider_options({})), CPU]
        session = ort().InferenceSession(str(onnx_path), session_options, providers=providers)
        require_started([CUDA], session.get_providers())
        settings: dict[str, Any] = {
            "providers": self.providers,
            "graph_optimization_level": ALL,
            "cuda_graph": options.static,  # as TensorRT: one graph per input shape set
        }
        return ENGINE_NAME, settings

    def target(self) -> dict[str, str]:
        """The saved graph holds no provider-specific nodes: nothing ties it to this machine."""
        return {}

    def load(
        self,
        name: str,
        path: Path,
        portable: Path,
        io: ComponentIO,
        settings: Mapping[str, Any],
        weights: Mapping[str, np.ndarray] | None = None,
    ) -> Engine:
        if weights:  # a CUDA session on the export, with those initializers overridden
            return OrtCudaEngine(name, portable, io, settings, initializers=weights)
        try:
            return OrtCudaEngine(name, path, io, settings)
        except ArtifactError as error:
            log.warning("%s; loading its export instead, which takes longer", error)
            return OrtCudaEngine(name, portable, io, settings)


class OrtCudaEngine(OrtEngine):
    """Outputs stay on the GPU until one copy back, and a read-only input passed again as the
    same array stays on the GPU between calls (see Engine). With a CUDA graph, inputs and outputs
    live at fixed device addresses, refreshed in place, and calls take turns."""

    def __init__(
        self,
        name: str,
        path: Path,
        io: ComponentIO,
        settings: Mapping[str, Any],
        *,
        initializers: Mapping[str, np.ndarray] | None = None,
    ) -> None:
        load_cuda_libraries()
        graphed = bool(settings.get("cuda_graph"))
        with QUIET_GRAPH_NOTICE if graphed else contextlib.nullcontext():
            super().__init__(name, path, io, settings, initializers=initializers)
        self._resident: dict[str, tuple[np.ndarray, Any]] = {}
        self._graphed = graphed
        self._graphs: dict[tuple[tuple[int, ...], ...], _Recorded] = {}
        self._searched: set[tuple[tuple[int, ...], ...]] = set()  # input shapes run before
        self._lock = threading.Lock()

    def provider_options(
        self, providers: list[str], settings: Mapping[str, Any]
    ) -> list[str | tuple[str, dict[str, str]]]:
        return [(p, cuda_provider_options(settings)) if p == CUDA else p for p in providers]

    def _device_input(self, name: str, array: np.ndarray) -> Any:
        held = self._resident.get(name)
        if held is not None and held[0] is array:
            return held[1]
        value = ort().OrtValue.ortvalue_from_numpy(array, "cuda", 0)
        if not array.flags.writeable:
            self._resident[name] = (array, value)
        return value

    def _run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        run = self._run_graphed if self._graphed else self._run_bound
        shapes = tuple(array.shape for array in feeds.values())
        if shapes in self._searched:
            return run(feeds)
        with QUIET_CUDNN_FALLBACKS:  # cuDNN searches its algorithms on a shape's first run
            outputs = run(feeds)
        self._searched.add(shapes)
        return outputs

    def _run_bound(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        binding = self._session.io_binding()
        for name, array in feeds.items():
            binding.bind_ortvalue_input(name, self._device_input(name, array))
        for name in self._output_names:
            binding.bind_output(name, "cuda")
        self._session.run_with_iobinding(binding)
        return dict(zip(self._output_names, binding.copy_outputs_to_cpu(), strict=True))

    def _run_graphed(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Each set of input shapes has its own recorded graph (ORT's `gpu_graph_id`), reading
        and writing fixed device tensors that are refreshed in place."""
        key = tuple(tuple(array.shape) for array in feeds.values())
        with self._lock:
            recorded = self._graphs.get(key)
            if recorded is None:
                recorded = self._graphs[key] = _Recorded(self._session, len(self._graphs), feeds)
            for name, array in feeds.items():
                recorded.tensors[name].update_inplace(np.ascontiguousarray(array))
            self._session.run_with_iobinding(recorded.binding, recorded.run_options)
            if not recorded.outputs_fixed:
                recorded.fix_outputs(self._output_names)
            return {name: recorded.tensors[name].numpy() for name in self._output_names}


class _Recorded:
    """Device tensors bound at fixed addresses for one set of input shapes, and its graph id.

    ONNX Runtime runs a graph plainly before it records it, so the outputs it allocates on the
    first run are bound explicitly for every later one."""

    def __init__(self, session: Any, graph_id: int, feeds: Mapping[str, np.ndarray]) -> None:
        library = ort()
        self.binding = session.io_binding()
        self.run_options = library.RunOptions()
        self.run_options.add_run_config_entry("gpu_graph_id", str(graph_id + 1))
        self.tensors: dict[str, Any] = {}
        for name, array in feeds.items():
            self.tensors[name] = library.OrtValue.ortvalue_from_numpy(array, "cuda", 0)
            self.binding.bind_ortvalue_input(name, self.tensors[name])
        for output in session.get_outputs():
            self.binding.bind_output(output.name, "cuda")
        self.outputs_fixed = False

    def fix_outputs(self, names: list[str]) -> None:
        for name, value in zip(names, self.binding.get_outputs(), strict=True):
            self.tensors[name] = value
            self.binding.bind_ortvalue_output(name, value)
        self.outputs_fixed = True
