"""A full-size build's peak memory, pinned: the SD 1.5 architecture's fp32 build on ONNX Runtime
holds its UNet's 3.2 GiB of weights about once at a time (5.0 GiB at its peak, measured on a
2-core Intel Xeon), so a change that brings back a second copy fails here. Minutes, and real
memory: run with `-m slow`."""

from __future__ import annotations

import resource
import subprocess
import sys

import pytest

from sdtrt.export.memory import GIB

# The peak may not pass this: the 9 GiB sdtrt promises for SD 1.5, a copy of its UNet below the
# 13.4 GiB a build took before its weights were held once.
SD15_PEAK_BOUND = 9 * GIB


@pytest.mark.slow
def test_sd15_builds_holding_its_weights_once(tmp_path):
    command = [sys.executable, "-m", "sdtrt.cli", "build", "sd15", "--backend", "onnxruntime"]
    done = subprocess.run(
        [*command, "--output", str(tmp_path / "engines")],
        capture_output=True,
        text=True,
        timeout=3600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024  # kB on Linux
    assert peak < SD15_PEAK_BOUND, f"the build peaked at {peak / GIB:.1f} GiB"
