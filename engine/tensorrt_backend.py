"""TensorRT backend: strongly typed engines built from the ONNX, run through cuda-bindings.

Precision comes from the graph (an fp16 ONNX builds an fp16 engine): TensorRT 10 and 11 both
build strongly typed networks, and 11 has no FP16 builder flag. Each engine has one optimisation
profile, from its component's shape ranges. At run time all engines of the process share one
activation scratch, sized to the largest (they run one after another, serialised by its lock);
device buffers and pinned host buffers are made once per input shape; an input passed again as
the same read-only array is not copied again (the pipeline's text states, constant over the
steps), so each step moves only the latents in and the prediction out; an engine built for a
single shape records its execution once as a CUDA graph and replays it.
"""

from __future__ import annotations

import importlib.util
import logging
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from sdtrt.engine import cuda, timing_cache
from sdtrt.engine.base import Engine
from sdtrt.engine.options import BuildOptions
from sdtrt.engine.tensors import ComponentIO, Shape
from sdtrt.engine.trt_host import check_compatible, is_static, nbytes, output_shapes, profile_shapes
from sdtrt.errors import ArtifactError, BackendUnavailable, BuildError

if TYPE_CHECKING:
    import tensorrt

log = logging.getLogger(__name__)

ENGINE_NAME = "engine.plan"
SHAPES_KEPT = 4  # buffer sets per engine; the pipeline uses one or two shapes per network


def _require() -> dict[str, Any]:
    """The GPU TensorRT will use; BackendUnavailable without TensorRT, CUDA or a GPU."""
    spec = importlib.util.find_spec("tensorrt")
    if spec is None or spec.origin is None:  # type stubs alone leave an empty namespace package
        raise BackendUnavailable(
            "TensorRT is not installed; run `pip install 'sdtrt[tensorrt]'` on a machine with an "
            "NVIDIA GPU (`sdtrt doctor` shows what is missing)"
        )
    cuda.require()
    if cuda.device_count() == 0:
        raise BackendUnavailable("TensorRT needs an NVIDIA GPU, and none is visible here")
    return cuda.device_properties(0)


_LOGGER: list[Any] = []  # TensorRT wants one logger per process, alive as long as it is


def _logger() -> Any:
    """TensorRT's messages through Python logging, so -v shows them and errors are not lost."""
    if _LOGGER:
        return _LOGGER[0]
    import tensorrt as trt

    severities = {
        trt.ILogger.Severity.INTERNAL_ERROR: logging.ERROR,
        trt.ILogger.Severity.ERROR: logging.ERROR,
        trt.ILogger.Severity.WARNING: logging.INFO,  # much that TensorRT warns about is fine
    }

    class Logger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)

        def log(self, severity: trt.ILogger.Severity, msg: str) -> None:
            log.log(severities.get(severity, logging.DEBUG), "TensorRT: %s", msg)

    _LOGGER.append(Logger())
    return _LOGGER[0]


class TensorRtBackend:
    name = "tensorrt"

    def version(self) -> str:
        """TensorRT's version; raises BackendUnavailable without TensorRT or a GPU."""
        _require()
        import tensorrt as trt

        return str(trt.__version__)

    def build(
        self,
        onnx_path: Path,
        out_dir: Path,
        io: ComponentIO,
        options: BuildOptions,
        cache_dir: Path,
    ) -> tuple[str, dict[str, Any]]:
        gpu = _require()
        import tensorrt as trt

        logger = _logger()
        builder = trt.Builder(logger)
        network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
        parser = trt.OnnxParser(network, logger)
        if not parser.parse_from_file(str(onnx_path)):
            first = parser.get_error(0) if parser.num_errors else "unknown error"
            raise BuildError(f"TensorRT cannot parse {onnx_path}: {first}")
        config = builder.create_builder_config()
        config.builder_optimization_level = options.optimization_level
        # TF32 (on by default) rounds fp32 matmul and conv inputs to 10 bits: fp32 layers,
        # whether of an fp32 build or the fp32 parts of an fp16 one, must stay fp32.
        if hasattr(trt.BuilderFlag, "TF32"):
            config.clear_flag(trt.BuilderFlag.TF32)
        if options.workspace_gib is not None:
            workspace = int(options.workspace_gib * 2**30)
            config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace)
        capability = gpu["compute_capability"]
        cache_path = cache_dir / f"tensorrt-{trt.__version__}-sm{capability}.timing-cache"
        previous = config.create_timing_cache(timing_cache.read(cache_path) or b"")
        config.set_timing_cache(previous, ignore_mismatch=False)
        profile = builder.create_optimization_profile()
        for name, low, opt, high in profile_shapes(io):
            profile.set_shape(name, trt.Dims(low), trt.Dims(opt), trt.Dims(high))
        config.add_optimization_profile(profile)
        plan = builder.build_serialized_network(network, config)
        if plan is None:
            raise BuildError(f"TensorRT could not build {onnx_path}; run with -v to see its log")
        (out_dir / ENGINE_NAME).write_bytes(memoryview(plan))

        def merged(current: bytes | None) -> bytes:
            # What this build timed, added to what builds since it started have saved.
            cache = config.create_timing_cache(current or b"")
            cache.combine(config.get_timing_cache(), ignore_mismatch=True)
            return bytes(memoryview(cache.serialize()))

        timing_cache.update(cache_path, merged)
        return ENGINE_NAME, {
            "tensorrt_version": trt.__version__,
            "gpu_name": gpu["name"],
            "compute_capability": gpu["compute_capability"],
            "optimization_level": options.optimization_level,
            "cuda_graph": is_static(io),
        }

    def load(
        self, name: str, path: Path, portable: Path, io: ComponentIO, settings: Mapping[str, Any]
    ) -> Engine:
        return TrtEngine(name, path, io, settings)


class SharedScratch:
    """The activation memory all TensorRT engines of this process take turns to use."""

    _instance: SharedScratch | None = None
    _create = threading.Lock()

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.buffer: cuda.DeviceBuffer | None = None
        self.generation = 0  # changes when the buffer moves; recorded CUDA graphs must follow

    @classmethod
    def get(cls) -> SharedScratch:
        with cls._create:
            if cls._instance is None:
                cls._instance = SharedScratch()
            return cls._instance

    def reserve(self, size: int) -> None:
        with self.lock:
            if self.buffer is None or self.buffer.nbytes < size:
                if self.buffer is not None:
                    self.buffer.close()
                self.buffer = cuda.DeviceBuffer(size)
                self.generation += 1


class _Bindings:
    """Device and pinned host buffers for one set of input shapes."""

    def __init__(self, io: ComponentIO, shapes: dict[str, Shape]) -> None:
        self.shapes = {**shapes, **output_shapes(io, shapes)}
        dtypes = {t.name: t.dtype for t in (*io.inputs, *io.outputs)}
        self.size = {name: nbytes(shape, dtypes[name]) for name, shape in self.shapes.items()}
        self.device = {name: cuda.DeviceBuffer(size) for name, size in self.size.items()}
        pinned = {name: cuda.PinnedBuffer(size) for name, size in self.size.items()}
        self.pinned = pinned
        self.host = {
            name: pinned[name].view(np.dtype(dtypes[name]), self.shapes[name])
            for name in self.shapes
        }
        self.graph: cuda.CudaGraph | None = None
        self.graph_generation = -1
        # Read-only inputs already on the device: the same unchangeable array needs no new copy.
        self.resident: dict[str, np.ndarray] = {}

    def close(self) -> None:
        if self.graph is not None:
            self.graph.close()
        for buffer in (*self.device.values(), *self.pinned.values()):
            buffer.close()


class TrtEngine(Engine):
    """A deserialised TensorRT engine behind the Engine interface."""

    def __init__(self, name: str, path: Path, io: ComponentIO, settings: Mapping[str, Any]) -> None:
        super().__init__(name, io)
        gpu = _require()
        import tensorrt as trt

        check_compatible(settings, trt.__version__, gpu["compute_capability"], path)
        self._runtime = trt.Runtime(_logger())
        engine = self._runtime.deserialize_cuda_engine(path.read_bytes())
        if engine is None:
            raise ArtifactError(f"{path} is not a usable TensorRT engine; rebuild the engines")
        self._engine: tensorrt.ICudaEngine = engine
        self._context: tensorrt.IExecutionContext = engine.create_execution_context(
            trt.ExecutionContextAllocationStrategy.USER_MANAGED
        )
        self._scratch = SharedScratch.get()
        self._scratch.reserve(engine.device_memory_size_v2)
        self._stream = cuda.Stream()
        self._use_graph = bool(settings.get("cuda_graph", False))
        self._bindings: dict[tuple[Shape, ...], _Bindings] = {}

    def _bind(self, feeds: Mapping[str, np.ndarray]) -> _Bindings:
        key = tuple(tuple(feeds[t.name].shape) for t in self.io.inputs)
        bindings = self._bindings.pop(key, None)  # re-inserted below: most recently used last
        if bindings is None:
            if len(self._bindings) >= SHAPES_KEPT:
                self._bindings.pop(next(iter(self._bindings))).close()
            bindings = _Bindings(
                self.io, {t.name: tuple(feeds[t.name].shape) for t in self.io.inputs}
            )
        self._bindings[key] = bindings
        for spec in self.io.inputs:
            shape = bindings.shapes[spec.name]
            if not self._context.set_input_shape(spec.name, shape):
                raise cuda.CudaError(f"{self.name}: TensorRT refused shape {shape} for {spec.name}")
        for name, buffer in bindings.device.items():
            self._context.set_tensor_address(name, buffer.ptr)
        return bindings

    def _execute(self, bindings: _Bindings) -> None:
        scratch = self._scratch.buffer
        assert scratch is not None
        self._context.set_device_memory(scratch.ptr, scratch.nbytes)
        if not self._use_graph:
            if not self._context.execute_async_v3(self._stream.address):
                raise cuda.CudaError(f"{self.name}: TensorRT execution failed")
            return
        if bindings.graph is None or bindings.graph_generation != self._scratch.generation:
            if bindings.graph is not None:
                bindings.graph.close()
            # One plain run first: TensorRT finishes lazy set-up outside the recording.
            self._context.execute_async_v3(self._stream.address)
            self._stream.synchronize()
            bindings.graph = cuda.CudaGraph(
                self._stream, lambda: self._context.execute_async_v3(self._stream.address)
            )
            bindings.graph_generation = self._scratch.generation
        bindings.graph.launch(self._stream)

    def _run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        with self._scratch.lock:
            bindings = self._bind(feeds)
            for spec in self.io.inputs:
                array = feeds[spec.name]
                if bindings.resident.get(spec.name) is array:
                    continue
                np.copyto(bindings.host[spec.name], array)
                self._stream.copy_to_device(
                    bindings.device[spec.name].ptr,
                    bindings.pinned[spec.name].ptr,
                    bindings.size[spec.name],
                )
                if not array.flags.writeable:
                    bindings.resident[spec.name] = array
                else:
                    bindings.resident.pop(spec.name, None)
            self._execute(bindings)
            for spec in self.io.outputs:
                self._stream.copy_to_host(
                    bindings.pinned[spec.name].ptr,
                    bindings.device[spec.name].ptr,
                    bindings.size[spec.name],
                )
            self._stream.synchronize()
            # Copies: the pinned buffers are reused by the next call.
            return {spec.name: bindings.host[spec.name].copy() for spec in self.io.outputs}

    def close(self) -> None:
        with self._scratch.lock:
            for bindings in self._bindings.values():
                bindings.close()
            self._bindings.clear()
            self._stream.close()
            del self._context, self._engine
