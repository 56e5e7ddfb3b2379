"""Device memory, pinned host memory, streams and CUDA graphs, through cuda-bindings' runtime API.

Each CUDA call is written out (so a type checker sees every name) and its result goes through
`_check`, which turns an error code into one exception naming the call. cuda-bindings is
imported only when a GPU backend is asked for.
"""

from __future__ import annotations

import ctypes
import importlib.util
from collections.abc import Callable
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


def device_count() -> int:
    """CUDA devices visible to this process; 0 where there is no driver or no GPU."""
    require()
    from cuda.bindings import runtime as cudart

    try:
        return int(_check("cudaGetDeviceCount", cudart.cudaGetDeviceCount()))
    except CudaError:
        return 0


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


class CudaGraph:
    """Work recorded once on a stream and replayed with one launch (fixed shapes and addresses)."""

    def __init__(self, stream: Stream, record: Callable[[], object]) -> None:
        from cuda.bindings import runtime as cudart

        mode = cudart.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
        _check("cudaStreamBeginCapture", cudart.cudaStreamBeginCapture(stream.handle, mode))
        try:
            record()
        finally:
            graph = _check("cudaStreamEndCapture", cudart.cudaStreamEndCapture(stream.handle))
        self._graph: Any = graph
        self._exec: Any = _check("cudaGraphInstantiate", cudart.cudaGraphInstantiate(graph, 0))

    def launch(self, stream: Stream) -> None:
        from cuda.bindings import runtime as cudart

        _check("cudaGraphLaunch", cudart.cudaGraphLaunch(self._exec, stream.handle))

    def close(self) -> None:
        from cuda.bindings import runtime as cudart

        if self._exec is not None:
            _check("cudaGraphExecDestroy", cudart.cudaGraphExecDestroy(self._exec))
            _check("cudaGraphDestroy", cudart.cudaGraphDestroy(self._graph))
            self._exec = None
