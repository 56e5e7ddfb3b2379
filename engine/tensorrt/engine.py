"""A deserialised TensorRT engine behind the Engine interface, callable from many threads.

The deserialised engine (the weights) is shared; every call in flight runs in a slot of its
own, since TensorRT's execution contexts are not thread-safe: an execution context, a CUDA
stream, and device plus pinned host buffers per set of input shapes. Slots are made when all
are busy and kept for later calls. Activation scratch comes from the process-wide pool of
trt_memory, one block per call in flight. Output shapes come from the execution context once
the input shapes are set, and are checked against the spec (trt_io).

An input passed again as the same read-only array is not copied again (the pipeline's text
states, constant over the steps), so each step moves only the latents in and the prediction
out. With `cuda_graph` (static builds) each slot records its execution once per shape set and
scratch block as a CUDA graph and replays it, each shape set in an execution context of its own
(a graph stays tied to the context it was recorded from); a capture that fails is reported once
and that slot runs without graphs from then on, never replaying a broken recording.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from sdtrt.engine import cuda
from sdtrt.engine.base import Engine
from sdtrt.engine.tensorrt.gpu import require_gpu
from sdtrt.engine.tensorrt.host import check_compatible, nbytes
from sdtrt.engine.tensorrt.io import TensorInfo, check_engine_io, numpy_dtype, output_shapes
from sdtrt.engine.tensorrt.logger import trt_logger
from sdtrt.engine.tensorrt.memory import Block, ScratchPool, SlotPool
from sdtrt.engine.tensors import ComponentIO, Shape
from sdtrt.errors import ArtifactError, InputError, SdtrtError

if TYPE_CHECKING:
    import tensorrt

log = logging.getLogger(__name__)

SHAPES_KEPT = 4  # buffer sets per slot; the pipeline uses one or two shapes per network
GRAPHS_KEPT = 2  # graphs per buffer set, one per scratch block it last ran with

_POOL: list[ScratchPool] = []
_POOL_LOCK = threading.Lock()


def scratch_pool() -> ScratchPool:
    """The activation scratch every TensorRT engine of this process draws from."""
    with _POOL_LOCK:
        if not _POOL:
            _POOL.append(ScratchPool(cuda.DeviceBuffer))
        return _POOL[0]


def describe_io(engine: tensorrt.ICudaEngine) -> list[TensorInfo]:
    """(name, "input"/"output", numpy dtype) for each of the engine's I/O tensors."""
    result = []
    for index in range(engine.num_io_tensors):
        name = engine.get_tensor_name(index)
        mode = engine.get_tensor_mode(name).name.lower()
        result.append((name, mode, numpy_dtype(engine.get_tensor_dtype(name).name)))
    return result


def _dims(dims: tensorrt.Dims) -> tuple[int, ...]:
    return tuple(int(dims[i]) for i in range(len(dims)))


def _new_context(engine: tensorrt.ICudaEngine) -> tensorrt.IExecutionContext:
    import tensorrt as trt

    context = engine.create_execution_context(trt.ExecutionContextAllocationStrategy.USER_MANAGED)
    if context is None:
        raise cuda.CudaError("TensorRT could not create an execution context")
    return context


class _Bindings:
    """Device and pinned host buffers for one set of input shapes, and its recorded graphs.

    With CUDA graphs the buffer set has an execution context of its own, set to its shapes and
    addresses once: a recorded graph is tied to the context it was recorded from, which must
    not be reset to other shapes between replays.
    """

    def __init__(
        self,
        shapes: dict[str, Shape],
        dtypes: dict[str, str],
        context: tensorrt.IExecutionContext | None,
    ) -> None:
        self.shapes = shapes
        self.context = context
        self.size = {name: nbytes(shape, dtypes[name]) for name, shape in shapes.items()}
        self.device = {name: cuda.DeviceBuffer(size) for name, size in self.size.items()}
        self.pinned = {name: cuda.PinnedBuffer(size) for name, size in self.size.items()}
        self.host = {
            name: self.pinned[name].view(np.dtype(dtypes[name]), shape)
            for name, shape in shapes.items()
        }
        self.graphs: dict[tuple[int, int], cuda.CudaGraph] = {}  # by scratch (address, size)
        # Read-only inputs already on the device: the same unchangeable array needs no new copy.
        self.resident: dict[str, np.ndarray] = {}

    def close(self) -> None:
        for graph in self.graphs.values():
            graph.close()
        self.graphs.clear()
        self.context = None
        for device in self.device.values():
            device.close()
        for pinned in self.pinned.values():
            pinned.close()


class _Slot:
    """What one call at a time uses: an execution context, its stream, its buffers."""

    def __init__(self, engine: tensorrt.ICudaEngine) -> None:
        self.engine = engine  # kept so that the engine outlives this slot's contexts
        self.context: tensorrt.IExecutionContext | None = _new_context(engine)
        self.stream = cuda.Stream()
        self.bindings: dict[tuple[Shape, ...], _Bindings] = {}
        self.scratch: tuple[int, int] = (0, 0)  # the block this slot ran with last
        self.graphs_failed = False

    def close(self) -> None:
        for bindings in self.bindings.values():
            bindings.close()
        self.bindings.clear()
        self.stream.close()
        self.context = None


class _Resources:
    """Everything a TrtEngine frees, held apart from it so that a finalizer can free it without
    keeping the TrtEngine alive. Freed in TensorRT's order: contexts, engine, runtime."""

    def __init__(
        self,
        name: str,
        runtime: tensorrt.Runtime,
        engine: tensorrt.ICudaEngine,
        pool: ScratchPool,
    ) -> None:
        self.name = name
        self.runtime: tensorrt.Runtime | None = runtime
        self.engine: tensorrt.ICudaEngine | None = engine
        self.pool = pool
        self.need = int(engine.device_memory_size_v2)
        pool.register(self.need)
        self.slots: SlotPool[_Slot] = SlotPool(self._make_slot, _Slot.close)

    def _make_slot(self) -> _Slot:
        if self.engine is None:
            raise InputError(f"{self.name}: the engine is closed; load it again")
        return _Slot(self.engine)

    def close(self) -> None:
        try:
            self.slots.close()
        except SdtrtError as error:  # may run at exit or from the garbage collector
            log.warning("%s: freeing its GPU memory failed: %s", self.name, error)
        finally:
            self.pool.unregister(self.need)
            self.engine = None  # slots still running keep it until they end
            self.runtime = None


class TrtEngine(Engine):
    """A deserialised TensorRT engine behind the Engine interface."""

    def __init__(self, name: str, path: Path, io: ComponentIO, settings: Mapping[str, Any]) -> None:
        super().__init__(name, io)
        gpu = require_gpu()
        import tensorrt as trt

        check_compatible(settings, trt.__version__, gpu["compute_capability"], path)
        runtime = trt.Runtime(trt_logger())
        engine = runtime.deserialize_cuda_engine(path.read_bytes())
        if engine is None:
            raise ArtifactError(f"{path} is not a usable TensorRT engine; rebuild the engines")
        check_engine_io(io, describe_io(engine), path)
        self._dtypes = {t.name: t.dtype for t in (*io.inputs, *io.outputs)}
        self._use_graph = bool(settings.get("cuda_graph", False))
        self._pool = scratch_pool()
        resources = _Resources(name, runtime, engine, self._pool)
        self._resources = resources
        self._slots = resources.slots
        # Frees the GPU memory of an engine nobody closed, once it is garbage; close() runs the
        # same finalizer, which runs at most once, so closing twice is harmless.
        self._finalizer = weakref.finalize(self, resources.close)
        self._slots.release(self._slots.acquire())  # a context now: a bad engine fails at load

    def refit(self, weights: Mapping[str, np.ndarray]) -> None:
        """Replace named weights of a refittable engine, between calls (LoRA switching)."""
        from sdtrt.engine.tensorrt.refit import refit_cuda_engine

        if self._resources.engine is None:
            raise InputError(f"{self.name}: the engine is closed; load it again")
        refit_cuda_engine(self._resources.engine, weights, self.name)

    def _run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if not self._finalizer.alive:
            raise InputError(f"{self.name}: the engine is closed; load it again")
        slot = self._slots.acquire()
        try:
            scratch = self._pool.acquire(preferred=slot.scratch[0])
            try:
                return self._run_in(slot, scratch, feeds)
            finally:
                slot.stream.synchronize()  # nothing may still use the scratch when it goes back
                self._pool.release(scratch)
        finally:
            self._slots.release(slot)

    def _run_in(
        self, slot: _Slot, scratch: Block, feeds: Mapping[str, np.ndarray]
    ) -> dict[str, np.ndarray]:
        bindings = self._bind(slot, feeds)
        for spec in self.io.inputs:
            array = feeds[spec.name]
            if bindings.resident.get(spec.name) is array:
                continue
            np.copyto(bindings.host[spec.name], array)
            slot.stream.copy_to_device(
                bindings.device[spec.name].ptr,
                bindings.pinned[spec.name].ptr,
                bindings.size[spec.name],
            )
            if not array.flags.writeable:
                bindings.resident[spec.name] = array
            else:
                bindings.resident.pop(spec.name, None)
        self._execute(slot, bindings, scratch)
        for spec in self.io.outputs:
            slot.stream.copy_to_host(
                bindings.pinned[spec.name].ptr,
                bindings.device[spec.name].ptr,
                bindings.size[spec.name],
            )
        slot.stream.synchronize()
        # Copies: the pinned buffers are reused by the next call.
        return {spec.name: bindings.host[spec.name].copy() for spec in self.io.outputs}

    def _bind(self, slot: _Slot, feeds: Mapping[str, np.ndarray]) -> _Bindings:
        inputs = {t.name: tuple(feeds[t.name].shape) for t in self.io.inputs}
        key = tuple(inputs.values())
        bindings = slot.bindings.pop(key, None)  # re-inserted below: most recently used last
        if bindings is None:
            if len(slot.bindings) >= SHAPES_KEPT:
                slot.bindings.pop(next(iter(slot.bindings))).close()
            bindings = self._new_bindings(slot, inputs)
        elif bindings.context is None:  # the slot's context may have run other shapes since
            self._point(slot.context, inputs, bindings)
        slot.bindings[key] = bindings
        return bindings

    def _new_bindings(self, slot: _Slot, inputs: dict[str, Shape]) -> _Bindings:
        own = _new_context(slot.engine) if self._use_graph else None
        context = own if own is not None else slot.context
        assert context is not None
        self._set_shapes(context, inputs)
        unknown = context.infer_shapes()
        if unknown:
            raise ArtifactError(
                f"{self.name}: TensorRT cannot size {', '.join(unknown)} from inputs "
                f"{inputs}; rebuild the engines"
            )
        reported = {t.name: _dims(context.get_tensor_shape(t.name)) for t in self.io.outputs}
        shapes = {**inputs, **output_shapes(self.name, self.io, inputs, reported)}
        bindings = _Bindings(shapes, self._dtypes, own)
        self._set_addresses(context, bindings)
        return bindings

    def _point(
        self,
        context: tensorrt.IExecutionContext | None,
        inputs: dict[str, Shape],
        bindings: _Bindings,
    ) -> None:
        assert context is not None
        self._set_shapes(context, inputs)
        self._set_addresses(context, bindings)

    def _set_shapes(self, context: tensorrt.IExecutionContext, inputs: dict[str, Shape]) -> None:
        for name, shape in inputs.items():
            if not context.set_input_shape(name, shape):
                raise InputError(f"{self.name}: TensorRT refused shape {shape} for {name}")

    def _set_addresses(self, context: tensorrt.IExecutionContext, bindings: _Bindings) -> None:
        for name, buffer in bindings.device.items():
            if not context.set_tensor_address(name, buffer.ptr):
                raise cuda.CudaError(f"{self.name}: TensorRT refused the address of {name}")

    def _execute(self, slot: _Slot, bindings: _Bindings, scratch: Block) -> None:
        context = bindings.context if bindings.context is not None else slot.context
        assert context is not None
        context.set_device_memory(scratch.ptr, scratch.nbytes)
        block = slot.scratch = (scratch.ptr, scratch.nbytes)

        def enqueue() -> bool:
            return bool(context.execute_async_v3(slot.stream.address))

        if bindings.context is None or slot.graphs_failed:
            if not enqueue():
                raise cuda.CudaError(f"{self.name}: TensorRT execution failed")
            return
        graph = bindings.graphs.get(block)
        if graph is not None:
            graph.launch(slot.stream)
            return
        # This call's results come from a plain run, which also lets TensorRT finish its lazy
        # set-up outside the recording; the graph serves the calls after it.
        if not enqueue():
            raise cuda.CudaError(f"{self.name}: TensorRT execution failed")
        slot.stream.synchronize()
        try:
            graph = cuda.CudaGraph(slot.stream, enqueue)
        except cuda.GraphCaptureError as error:
            log.warning("%s: %s; running without CUDA graphs", self.name, error)
            slot.graphs_failed = True
            return
        if len(bindings.graphs) >= GRAPHS_KEPT:
            bindings.graphs.pop(next(iter(bindings.graphs))).close()
        bindings.graphs[block] = graph

    def close(self) -> None:
        """Free the engine's GPU memory; harmless to call again. Call it when no call runs."""
        self._finalizer()
