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
import functools
import logging
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from sdtrt.engine.base import Engine
from sdtrt.engine.onnxruntime_backend import (
    ALL,
    CPU,
    CUDA,
    ENGINE_NAME,
    OnnxRuntimeBackend,
    OrtEngine,
    QuietDefaultLogger,
    _ort,
    require_started,
    saving_options,
)
from sdtrt.engine.options import BuildOptions, GraphStyle
from sdtrt.engine.tensors import ComponentIO, Feeds
from sdtrt.errors import ArtifactError

if TYPE_CHECKING:
    import onnx

log = logging.getLogger(__name__)
# ONNX Runtime's operator domain for its contrib nodes.
CONTRIB_DOMAIN = "com.microsoft"
# Provider-independent optimisations only (constant folding, redundant nodes): see above.
BASIC = "ORT_ENABLE_BASIC"
# ONNX Runtime contrib nodes that only its CUDA provider runs (export/cuda_fusions.py).
CUDA_ONLY_OPS = frozenset({"GroupNorm", "SkipGroupNorm", "NhwcConv", "BiasSplitGelu", "BiasAdd"})


def _runs_on_cuda_only(node: onnx.NodeProto) -> bool:
    return node.op_type in CUDA_ONLY_OPS and node.domain == CONTRIB_DOMAIN


def cuda_only(graph: onnx.GraphProto) -> bool:
    """Whether `graph` holds nodes that run on ONNX Runtime's CUDA provider alone."""
    return any(_runs_on_cuda_only(node) for node in graph.node)


def kernel_constants(graph: onnx.GraphProto) -> set[str]:
    """The weights that ONNX Runtime's CUDA-only kernels must get as constants: they lay them out
    when the session starts (NhwcConv takes its weight as channels-last only then; GroupNorm
    sizes its blocks from its scale), so such a weight fed as an input is misread. A weight
    reaching NhwcConv through a Transpose counts too (see fold_weight_layouts)."""
    producers = {output: node for node in graph.node for output in node.output}
    names = set()
    for node in filter(_runs_on_cuda_only, graph.node):
        for name in node.input[1:]:
            source = producers.get(name)
            if source is not None and source.op_type == "Transpose":
                names.update(source.input)
            else:
                names.add(name)
    return names


def fold_weight_layouts(model: onnx.ModelProto) -> None:
    """Replace each Transpose of a constant with the transposed constant, as ONNX Runtime does
    when it optimises a graph: in a session that does not (every tensor compared, in `sdtrt
    debug compare`), NhwcConv would read a computed weight, which it takes as not channels-last."""
    from onnx import numpy_helper

    constants = {t.name: t for t in model.graph.initializer}
    kept = []
    for node in model.graph.node:
        if node.op_type != "Transpose" or node.input[0] not in constants:
            kept.append(node)
            continue
        perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), None)
        array = numpy_helper.to_array(constants[node.input[0]])
        folded = np.ascontiguousarray(np.transpose(array, perm))
        model.graph.initializer.append(numpy_helper.from_array(folded, node.output[0]))
    del model.graph.node[:]
    model.graph.node.extend(kept)
    read = {name for node in kept for name in node.input}
    used = [t for t in model.graph.initializer if t.name in read]  # the untransposed ones go
    del model.graph.initializer[:]
    model.graph.initializer.extend(used)


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


@functools.cache
def load_cuda_libraries() -> None:
    """Load CUDA and cuDNN from the nvidia-* pip packages beside onnxruntime-gpu, once.

    The CUDA provider finds them only through the loader's search path, which pip's packages are
    not on unless torch loaded them first, and sdtrt's runtime imports no torch. onnxruntime-gpu
    >= 1.21 has `preload_dlls` for this; libraries already on the path load as before."""
    preload = getattr(_ort(), "preload_dlls", None)
    if preload is not None:
        preload()


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
    providers = [CUDA, CPU]
    # Flash attention for the fused node, fp16 normalisations (the CUDA kernels of the
    # normalisations accumulate in fp32 themselves), and ONNX Runtime's fused diffusion kernels.
    # On an H200 (SD 1.5, 512x512, batch 2, CUDA graph) the UNet call took 25.9 ms with plain
    # attention, 15.8 ms fused, 14.4 ms fused with fp16 normalisations and 7.7 ms with the fused
    # kernels too, for the same error against torch.
    graph_style = GraphStyle(fused_attention=True, fp32_norms=False, cuda_fusions=True)

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
        session = _ort().InferenceSession(str(onnx_path), session_options, providers=providers)
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
        self, name: str, path: Path, portable: Path, io: ComponentIO, settings: Mapping[str, Any]
    ) -> Engine:
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
        value = _ort().OrtValue.ortvalue_from_numpy(array, "cuda", 0)
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
