"""What a benchmark ran on: numbers without the machine and versions mean little."""

from __future__ import annotations

import os
import platform
import resource
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from sdtrt import __version__


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gib() -> float | None:
    try:
        pages, size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None
    return round(pages * size / 2**30, 1)


def gpus() -> list[dict[str, Any]]:
    """Name and memory use of each NVIDIA GPU, from nvidia-smi; empty without one."""
    if shutil.which("nvidia-smi") is None:
        return []
    query = "--query-gpu=name,memory.used,memory.total,compute_cap"
    try:
        done = subprocess.run(
            ["nvidia-smi", query, "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return []
    result = []
    for line in done.stdout.strip().splitlines():
        name, used, total, capability = (part.strip() for part in line.split(","))
        result.append(
            {
                "name": name,
                "memory_used_mib": float(used),
                "memory_total_mib": float(total),
                "compute_capability": capability,
            }
        )
    return result


def peak_rss_mib() -> float:
    """This process's peak resident memory so far."""
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(kib / 1024, 1)


def machine_info() -> dict[str, Any]:
    import numpy
    import onnxruntime

    return {
        "cpu": _cpu_model(),
        "logical_cpus": os.cpu_count(),
        "memory_gib": _memory_gib(),
        "os": platform.platform(),
        "python": sys.version.split()[0],
        "sdtrt": __version__,
        "numpy": numpy.__version__,
        "onnxruntime": onnxruntime.__version__,
        "onnxruntime_providers": onnxruntime.get_available_providers(),
        "gpus": gpus(),
    }
