"""CUDA graphs through cuda-bindings on a real GPU: a replay reads the inputs as they are now,
and a capture that failed or recorded nothing is refused and leaves the stream usable.

Marked `gpu`: skipped without an NVIDIA GPU or without cuda-bindings; needs no TensorRT.
"""

import numpy as np
import pytest

from sdtrt.engine import cuda
from sdtrt.errors import BackendUnavailable


def _gpu_missing() -> str | None:
    try:
        found = cuda.probe()
    except BackendUnavailable as error:  # no cuda-bindings
        return str(error)
    return found.problem or (None if found.count else "no NVIDIA GPU is visible")


pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(_gpu_missing() is not None, reason=str(_gpu_missing())),
]

SIZE = 1 << 16


class Copies:
    """Host -> device -> host through pinned buffers: work a graph can record."""

    def __init__(self) -> None:
        self.stream = cuda.Stream()
        self.source = cuda.PinnedBuffer(SIZE)
        self.target = cuda.PinnedBuffer(SIZE)
        self.device = cuda.DeviceBuffer(SIZE)
        self.host_in = self.source.view(np.dtype(np.float32), (SIZE // 4,))
        self.host_out = self.target.view(np.dtype(np.float32), (SIZE // 4,))

    def enqueue(self) -> bool:
        self.stream.copy_to_device(self.device.ptr, self.source.ptr, SIZE)
        self.stream.copy_to_host(self.target.ptr, self.device.ptr, SIZE)
        return True

    def close(self) -> None:
        for resource in (self.stream, self.source, self.target, self.device):
            resource.close()


@pytest.fixture
def copies():
    made = Copies()
    yield made
    made.close()


def test_replays_read_the_inputs_as_they_are_now(copies):
    graph = cuda.CudaGraph(copies.stream, copies.enqueue)
    try:
        rng = np.random.default_rng(0)
        for _ in range(3):
            values = rng.standard_normal(copies.host_in.shape, dtype=np.float32)
            copies.host_in[:] = values
            graph.launch(copies.stream)
            copies.stream.synchronize()
            assert np.array_equal(copies.host_out, values)
    finally:
        graph.close()
        graph.close()  # closing twice is harmless


def test_a_call_that_failed_while_recording_is_refused(copies):
    def failing() -> bool:
        copies.enqueue()
        return False  # what execute_async_v3 answers when TensorRT could not enqueue

    with pytest.raises(cuda.GraphCaptureError, match="reported failure"):
        cuda.CudaGraph(copies.stream, failing)
    _stream_still_works(copies)


def test_an_empty_capture_is_refused(copies):
    with pytest.raises(cuda.GraphCaptureError, match="nothing was recorded"):
        cuda.CudaGraph(copies.stream, lambda: True)
    _stream_still_works(copies)


def test_a_synchronising_call_during_capture_is_refused(copies):
    def illegal() -> bool:
        copies.enqueue()
        copies.stream.synchronize()  # not allowed while capturing: invalidates the capture
        return True

    with pytest.raises(cuda.CudaError):
        cuda.CudaGraph(copies.stream, illegal)
    _stream_still_works(copies)


def _stream_still_works(copies: Copies) -> None:
    copies.host_in[:] = 7.0
    copies.enqueue()
    copies.stream.synchronize()
    assert np.all(copies.host_out == 7.0)
