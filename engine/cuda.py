"""Device memory, pinned host memory, streams and CUDA graphs, through cuda-bindings' runtime API.

Each CUDA call is written out (so a type checker sees every name) and its result goes through
`_check`, which turns an error code into one exception naming the call. cuda-bindings is
imported only when a GPU backend is asked for.
"""

from __future__ import annotations

import ctypes
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from sdtrt.errors import BackendUnavailable, SdtrtError


class CudaError(SdtrtError):
    """A CUDA runtime call failed."""


def require() -> None:
    if (
        importlib.util.find_spec("cuda") is None
        or importlib.util.find_spec("cuda.bindings") is None
    ):
        raise BackendUnavailable(
            "cuda-bindings is not installed; run `pip install 'sdtrt[tensorrt]'`"
        )


def _check(what: str, result: tuple[Any, ...]) -> Any:
    """The value(s) of a cuda-bindings call (error code first), or CudaError naming `what`."""
    from cuda.bindings import runtime as cudart

    error, *values = result
    if error != cudart.cudaError_t.cudaSuccess:
        _, text = cudart.cudaGetErrorString(error)
        raise CudaError(f"{what} failed: {text.decode() if isinstance(text, bytes) else text}")
    if not values:
        return None
    return values[0] if len(values) == 1 else tuple(values)


# Errors from cudaGetDeviceCount that mean "no GPU here" rather than "a GPU CUDA cannot use".
_NO_GPU_ERRORS = frozenset({"cudaErrorNoDevice", "cudaErrorDevicesUnavailable"})


@dataclass(frozen=True)
class GpuProbe:
    """What cudaGetDeviceCount found: a count, or CUDA's own words for why it cannot count."""

    count: int
    problem: str | None = None


def read_probe(error: str, text: str, count: int | None, driver: int, runtime: int) -> GpuProbe:
    """Interpret cudaGetDeviceCount's answer. No driver at all (version 0) or no device means no
    GPU; any other error (a driver older than this CUDA runtime, above all) is a real problem
    that must be shown, not read as an empty machine."""
    if error == "cudaSuccess":
        return GpuProbe(int(count or 0))
    if driver == 0 or error in _NO_GPU_ERRORS:
        return GpuProbe(0)
    problem = f"CUDA cannot use this machine's GPUs: {error} ({text})"
    if error == "cudaErrorInsufficientDriver":
        problem += (
            f"; the NVIDIA driver supports CUDA {format_version(driver)} but cuda-bindings needs "
            f"{format_version(runtime)}: update the driver or install a cuda-bindings (and "
            "TensorRT) for the driver's CUDA major"
        )
    return GpuProbe(0, problem)


def format_version(encoded: int) -> str:
    """CUDA's encoded version (12040) as text ("12.4")."""
    return f"{encoded // 1000}.{encoded % 1000 // 10}"


def probe() -> GpuProbe:
    """How many CUDA devices this process sees, or why CUDA cannot tell."""
    require()
    from cuda.bindings import runtime as cudart

    error, count = cudart.cudaGetDeviceCount()
    _, name = cudart.cudaGetErrorName(error)
    _, text = cudart.cudaGetErrorString(error)
    driver_error, driver = cudart.cudaDriverGetVersion()
    _, runtime = cudart.cudaRuntimeGetVersion()
    return read_probe(
        _text(name),
        _text(text),
        count,
        int(driver) if driver_error == cudart.cudaError_t.cudaSuccess else 0,
        int(runtime or 0),
    )


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def device_count() -> int:
    """CUDA devices visible to this process: 0 where there is no driver or no GPU, and
    BackendUnavailable with CUDA's error where a GPU is there but unusable (an old driver)."""
    found = probe()
    if found.problem is not None:
        raise BackendUnavailable(found.problem)
    return found.count


def device_properties(device: int = 0) -> dict[str, Any]:
    """Name, compute capability ("8.9") and memory of a GPU."""
    from cuda.bindings import runtime as cudart

    properties = _check("cudaGetDeviceProperties", cudart.cudaGetDeviceProperties(device))
    name = properties.name
    return {
        "name": (name.decode() if isinstance(name, bytes) else str(name)).rstrip("\x00"),
        "compute_capability": f"{properties.major}.{properties.minor}",
        "total_memory": int(properties.totalGlobalMem),
    }


def versions() -> dict[str, int]:
    """CUDA driver and runtime versions as CUDA encodes them (12040 is 12.4)."""
    from cuda.bindings import runtime as cudart

    return {
        "driver": int(_check("cudaDriverGetVersion", cudart.cudaDriverGetVersion())),
        "runtime": int(_check("cudaRuntimeGetVersion", cudart.cudaRuntimeGetVersion())),
    }


class DeviceBuffer:
    """A block of device memory, freed on close."""

    def __init__(self, nbytes: int) -> None:
        from cuda.bindings import runtime as cudart

        self.nbytes = nbytes
        self.ptr = int(_check("cudaMalloc", cudart.cudaMalloc(max(nbytes, 1))))

    def close(self) -> None:
        from cuda.bindings import runtime as cudart

        if self.ptr:
            _check("cudaFree", cudart.cudaFree(self.ptr))
            self.ptr = 0


class PinnedBuffer:
    """Page-locked host memory, which the GPU copies to and from asynchronously."""

    def __init__(self, nbytes: int) -> None:
        from cuda.bindings import runtime as cudart

        self.nbytes = nbytes
        self.ptr = int(_check("cudaMallocHost", cudart.cudaMallocHost(max(nbytes, 1))))

    def view(self, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
        """A numpy array over this memory (valid until close)."""
        count = int(np.prod(shape)) * np.dtype(dtype).itemsize
        raw = (ctypes.c_byte * count).from_address(self.ptr)
        return np.frombuffer(memoryview(raw), dtype=dtype).reshape(shape)

    def close(self) -> None:
        from cuda.bindings import runtime as cudart

        if self.ptr:
            _check("cudaFreeHost", cudart.cudaFreeHost(self.ptr))
            self.ptr = 0


class Stream:
    def __init__(self) -> None:
        from cuda.bindings import runtime as cudart

        self.handle: Any = _check("cudaStreamCreate", cudart.cudaStreamCreate())

    @property
    def address(self) -> int:
        """The stream as the integer handle TensorRT takes."""
        return int(self.handle)

    def copy_to_device(self, device: int, host: int, nbytes: int) -> None:
        from cuda.bindings import runtime as cudart

        kind = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        _check("cudaMemcpyAsync", cudart.cudaMemcpyAsync(device, host, nbytes, kind, self.handle))

    def copy_to_host(self, host: int, device: int, nbytes: int) -> None:
        from cuda.bindings import runtime as cudart

        kind = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        _check("cudaMemcpyAsync", cudart.cudaMemcpyAsync(host, device, nbytes, kind, self.handle))

    def synchronize(self) -> None:
        from cuda.bindings import runtime as cudart

        _check("cudaStreamSynchronize", cudart.cudaStreamSynchronize(self.handle))

    def close(self) -> None:
        from cuda.bindings import runtime as cudart

        if self.handle is not None:
            _check("cudaStreamDestroy", cudart.cudaStreamDestroy(self.handle))
            self.handle = None


class GraphCaptureError(CudaError):
    """Recording work as a CUDA graph failed; the work must run without the graph."""


def capture_problem(recorded: bool, status: str, end_error: str, nodes: int) -> str | None:
    """Why a stream capture cannot be replayed, or None when it can: the recorded call must
    have succeeded, the capture must still have been active when it ended, ending must have
    returned a graph, and that graph must hold work (an empty one would replay nothing and
    leave the last outputs in place)."""
    if not recorded:
        return "the recorded call reported failure"
    if status != "cudaStreamCaptureStatusActive":
        return f"the capture was not active at its end ({status})"
    if end_error != "cudaSuccess":
        return f"cudaStreamEndCapture failed ({end_error})"
    if nodes == 0:
        return "nothing was recorded"
    return None


class CudaGraph:
    """Work recorded once on a stream and replayed with one launch (fixed shapes and addresses).

    `record` returns whether the work it enqueued was accepted. Any failure raises
    GraphCaptureError, after which nothing is left recorded and the stream is usable again.
    """

    def __init__(self, stream: Stream, record: Callable[[], bool]) -> None:
        from cuda.bindings import runtime as cudart

        self._graph: Any = None
        self._exec: Any = None
        mode = cudart.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
        _check("cudaStreamBeginCapture", cudart.cudaStreamBeginCapture(stream.handle, mode))
        recorded = False
        status = "cudaStreamCaptureStatusNone"
        try:
            recorded = bool(record())
        finally:
            # Always end the capture, even when `record` raised: the stream must be usable.
            info = cudart.cudaStreamGetCaptureInfo(stream.handle)
            if info[0] == cudart.cudaError_t.cudaSuccess:
                status = info[1].name
            end_error, graph = cudart.cudaStreamEndCapture(stream.handle)
            self._graph = graph if end_error == cudart.cudaError_t.cudaSuccess else None
            if not recorded:
                self.close()  # a failure or an exception: nothing of the capture is kept
        nodes = 0
        if self._graph is not None:
            nodes_error, _, count = cudart.cudaGraphGetNodes(self._graph)
            nodes = int(count) if nodes_error == cudart.cudaError_t.cudaSuccess else 0
        problem = capture_problem(recorded, status, end_error.name, nodes)
        if problem is None:
            try:
                self._exec = _check(
                    "cudaGraphInstantiate", cudart.cudaGraphInstantiate(self._graph, 0)
                )
            except CudaError as error:
                problem = str(error)
        if problem is not None:
            self.close()
            raise GraphCaptureError(f"CUDA graph capture failed: {problem}")

    def launch(self, stream: Stream) -> None:
        from cuda.bindings import runtime as cudart

        _check("cudaGraphLaunch", cudart.cudaGraphLaunch(self._exec, stream.handle))

    def close(self) -> None:
        from cuda.bindings import runtime as cudart

        if self._exec is not None:
            _check("cudaGraphExecDestroy", cudart.cudaGraphExecDestroy(self._exec))
            self._exec = None
        if self._graph is not None:
            _check("cudaGraphDestroy", cudart.cudaGraphDestroy(self._graph))
            self._graph = None
