"""CUDA's answers read right: a GPU CUDA cannot use is not an empty machine, and a capture
that recorded nothing or failed is never replayed."""

import pytest

from sdtrt.engine import cuda
from sdtrt.errors import BackendUnavailable


def test_no_driver_or_no_device_means_no_gpu():
    # No driver at all: cudaGetDeviceCount says "insufficient driver", the driver version is 0.
    assert cuda.read_probe(
        "cudaErrorInsufficientDriver", "CUDA driver version is insufficient", None, 0, 13050
    ) == cuda.GpuProbe(0)
    assert cuda.read_probe("cudaErrorNoDevice", "no CUDA-capable device", None, 12040, 12060) == (
        cuda.GpuProbe(0)
    )
    assert cuda.read_probe("cudaSuccess", "no error", 2, 12040, 12060) == cuda.GpuProbe(2)


def test_a_driver_older_than_the_runtime_is_reported_in_cudas_words():
    found = cuda.read_probe(
        "cudaErrorInsufficientDriver",
        "CUDA driver version is insufficient for CUDA runtime version",
        None,
        12040,
        13000,
    )
    assert found.count == 0 and found.problem is not None
    assert "cudaErrorInsufficientDriver" in found.problem
    assert "CUDA driver version is insufficient for CUDA runtime version" in found.problem
    assert "supports CUDA 12.4 but cuda-bindings needs 13.0" in found.problem


def test_other_cuda_errors_are_reported_too():
    found = cuda.read_probe("cudaErrorSystemNotReady", "system not yet initialized", None, 12040, 0)
    assert found.problem == (
        "CUDA cannot use this machine's GPUs: cudaErrorSystemNotReady (system not yet initialized)"
    )


def test_this_machine_probes_without_error():
    # Whatever this machine has, probing answers; an unusable GPU raises with CUDA's words.
    found = cuda.probe()
    if found.problem is None:
        assert cuda.device_count() == found.count
    else:
        with pytest.raises(BackendUnavailable, match="CUDA cannot use"):
            cuda.device_count()


@pytest.mark.parametrize(
    ("recorded", "status", "end", "nodes", "reason"),
    [
        (False, "cudaStreamCaptureStatusActive", "cudaSuccess", 40, "reported failure"),
        (True, "cudaStreamCaptureStatusInvalidated", "cudaSuccess", 40, "not active"),
        (True, "cudaStreamCaptureStatusActive", "cudaErrorStreamCaptureInvalidated", 0, "End"),
        (True, "cudaStreamCaptureStatusActive", "cudaSuccess", 0, "nothing was recorded"),
    ],
)
def test_failed_or_empty_captures_are_refused(recorded, status, end, nodes, reason):
    problem = cuda.capture_problem(recorded, status, end, nodes)
    assert problem is not None and reason in problem


def test_a_whole_capture_is_kept():
    assert cuda.capture_problem(True, "cudaStreamCaptureStatusActive", "cudaSuccess", 57) is None
