"""What this machine has: the CPU's instruction sets, and whether an NVIDIA GPU is visible.

Backends decide from these (which kernels to compile, which layout to save, whether they can run
here) and `sdtrt doctor` reports them; nothing here imports a backend's library.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from pathlib import Path

from sdtrt.engine import cuda
from sdtrt.errors import BackendUnavailable

# CPU flags that decide which kernels a CPU backend compiles: vector widths, and the bf16 and
# int8 dot-product instructions. A model compiled on a CPU may use any of those present there.
ISA_FLAGS = (
    "avx",
    "avx2",
    "fma",
    "f16c",
    "avx512f",
    "avx512bw",
    "avx512dq",
    "avx512vl",
    "avx512_vnni",
    "avx_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "amx_tile",
    "amx_bf16",
    "amx_int8",
)
BF16_FLAGS = ("avx512_bf16", "amx_bf16")
# Without these, int8 kernels emulate the dot products (w8a8 still runs, slower).
INT8_DOT_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")


@functools.cache
def _read_cpu_flags() -> frozenset[str]:
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def cpu_flags() -> set[str]:
    """The CPU's feature flags, from /proc/cpuinfo (read once per process: every build and
    load of a CPU engine asks); empty where that cannot be read."""
    return set(_read_cpu_flags())


def isa_features(flags: Iterable[str]) -> list[str]:
    """The flags among `flags` that a compiled model may depend on, sorted."""
    return sorted(set(flags) & set(ISA_FLAGS))


def has_bf16(flags: Iterable[str]) -> bool:
    """Whether a CPU with `flags` computes in bfloat16 natively."""
    return bool(set(flags) & set(BF16_FLAGS))


def has_int8_dot(flags: Iterable[str]) -> bool:
    """Whether a CPU with `flags` has int8 dot-product instructions."""
    return bool(set(flags) & set(INT8_DOT_FLAGS))


def nvidia_gpu_count() -> int:
    """NVIDIA GPUs visible here: CUDA's own count where cuda-bindings can tell, else whether
    the driver's device node exists."""
    try:
        return cuda.device_count()
    except BackendUnavailable:  # no cuda-bindings, or CUDA's complaint: the device nodes tell
        return int(Path("/dev/nvidia0").exists())
