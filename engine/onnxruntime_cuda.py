"""ONNX Runtime on an NVIDIA GPU (the onnxruntime-gpu package), through IO binding.

The saved engine is the export after ONNX Runtime's provider-independent (basic) optimisations,
made by a CPU session: a graph saved from a CUDA session holds nodes fused for that provider,
which ONNX Runtime does not always load again (onnxruntime issue 11348). The CUDA session applies
its own optimisations when it loads.

The provider's options are chosen, not left to its defaults (see `cuda_provider_options`).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from sdtrt.engine.base import Engine
from sdtrt.engine.onnxruntime_backend import CPU, CUDA, OnnxRuntimeBackend, OrtEngine, _ort
from sdtrt.engine.options import BuildOptions
from sdtrt.engine.tensors import ComponentIO

BASIC = "ORT_ENABLE_BASIC"


def cuda_provider_options(settings: Mapping[str, Any]) -> dict[str, str]:
    """The CUDA provider's options for an engine built with `settings`.

    - TF32 off: the provider rounds fp32 matmul and convolution inputs to 10 bits by default,
      which breaks fp32's 1e-4 parity; the fp32 islands of an fp16 graph need fp32 too.
    - Exhaustive cuDNN convolution search with its largest workspace: a denoising loop runs the
      same few convolution shapes thousands of times, so the one-off search pays for itself.
    - CUDA graphs for `--static` engines (one image size): each input shape set is recorded
      once, then every step is one replay.
    """
    options = {
        "use_tf32": "0",
        "cudnn_conv_algo_search": "EXHAUSTIVE",
        "cudnn_conv_use_max_workspace": "1",
    }
    if settings.get("cuda_graph"):
        options["enable_cuda_graph"] = "1"
    return options


class OnnxRuntimeCudaBackend(OnnxRuntimeBackend):
    name = "onnxruntime-cuda"
    providers = [CUDA, CPU]
    saves_cpu_layout = False
    portable_level = BASIC

    def build(
        self,
        onnx_path: Path,
        out_dir: Path,
        io: ComponentIO,
        options: BuildOptions,
        cache_dir: Path,
    ) -> tuple[str, dict[str, Any]]:
        name, settings = super().build(onnx_path, out_dir, io, options, cache_dir)
        settings["cuda_graph"] = options.static  # as TensorRT: one graph per input shape set
        return name, settings

    def target(self) -> dict[str, str]:
        """The saved graph is provider-independent: nothing ties it to this machine."""
        return {}

    def load(
        self, name: str, path: Path, portable: Path, io: ComponentIO, settings: Mapping[str, Any]
    ) -> Engine:
        return OrtCudaEngine(name, path, io, settings)


class OrtCudaEngine(OrtEngine):
    """Outputs stay on the GPU until one copy back, and a read-only input passed again as the
    same array stays on the GPU between calls (see Engine). With a CUDA graph, inputs and outputs
    live at fixed device addresses, refreshed in place, and calls take turns."""

    def __init__(self, name: str, path: Path, io: ComponentIO, settings: Mapping[str, Any]) -> None:
        super().__init__(name, path, io, settings)
        self._resident: dict[str, tuple[np.ndarray, Any]] = {}
        self._graphed = bool(settings.get("cuda_graph"))
        self._graphs: dict[tuple[tuple[int, ...], ...], _Recorded] = {}
        self._lock = threading.Lock()

    def provider_options(
        self, providers: list[str], settings: Mapping[str, Any]
    ) -> list[str | tuple[str, dict[str, str]]]:
        return [(p, cuda_provider_options(settings)) if p == CUDA else p for p in providers]

    def _device_input(self, name: str, array: np.ndarray) -> Any:
        held = self._resident.get(name)
        if held is not None and held[0] is array:
            return held[1]
        value = _ort().OrtValue.ortvalue_from_numpy(array, "cuda", 0)
        if not array.flags.writeable:
            self._resident[name] = (array, value)
        return value

    def _run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self._graphed:
            return self._run_graphed(feeds)
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
        ort = _ort()
        self.binding = session.io_binding()
        self.run_options = ort.RunOptions()
        self.run_options.add_run_config_entry("gpu_graph_id", str(graph_id + 1))
        self.tensors: dict[str, Any] = {}
        for name, array in feeds.items():
            self.tensors[name] = ort.OrtValue.ortvalue_from_numpy(array, "cuda", 0)
            self.binding.bind_ortvalue_input(name, self.tensors[name])
        for output in session.get_outputs():
            self.binding.bind_output(output.name, "cuda")
        self.outputs_fixed = False

    def fix_outputs(self, names: list[str]) -> None:
        for name, value in zip(names, self.binding.get_outputs(), strict=True):
            self.tensors[name] = value
            self.binding.bind_ortvalue_output(name, value)
        self.outputs_fixed = True
