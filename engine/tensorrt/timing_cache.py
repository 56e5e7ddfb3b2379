"""A TensorRT timing cache kept beside the engines and shared by builds, one writer at a time.

Builds read the cache, add what they timed, and write it back whole (through a rename) under an
exclusive lock, so two builds at once each see a valid cache and neither loses the other's work.
One file per GPU model and TensorRT release: timings from another GPU of the same architecture
(an H100 and an H200 are both sm 9.0) would mislead the builder, and TensorRT refuses a cache
from another release anyway.

TensorRT reports a cache it cannot use by returning False (from `set_timing_cache` and
`combine`), not by raising; `attach` and `merged` act on those answers.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

log = logging.getLogger(__name__)


class TimingCacheConfig(Protocol):
    """The part of TensorRT's IBuilderConfig that handles timing caches."""

    def create_timing_cache(self, serialized_timing_cache: bytes) -> Any: ...

    def set_timing_cache(self, cache: Any, ignore_mismatch: bool) -> bool: ...

    def get_timing_cache(self) -> Any: ...


def cache_path(cache_dir: Path, gpu_name: str, capability: str, trt_version: str) -> Path:
    """The cache file for this GPU model, compute capability and TensorRT release."""
    gpu = re.sub(r"[^A-Za-z0-9.]+", "-", gpu_name).strip("-.") or "gpu"
    return cache_dir / f"tensorrt-{trt_version}-{gpu}-sm{capability}.timing-cache"


def attach(config: TimingCacheConfig, previous: bytes | None, path: Path) -> bool:
    """Give the builder the saved timings, or an empty cache where TensorRT refuses them (a
    damaged file, another release). False when TensorRT takes no cache at all: the build then
    times from scratch and nothing is saved."""
    if previous:
        saved = config.create_timing_cache(previous)
        if saved is not None and config.set_timing_cache(saved, False):
            return True
        log.warning("TensorRT cannot use the timing cache %s; timing from scratch", path)
    fresh = config.create_timing_cache(b"")
    if fresh is not None and config.set_timing_cache(fresh, False):
        return True
    log.warning("TensorRT refused an empty timing cache; building without one")
    return False


def merged(config: TimingCacheConfig, current: bytes | None) -> bytes | None:
    """What this build timed added to the saved cache as it is now (builds since this one
    started may have added to it); None when there is nothing to save. A saved cache TensorRT
    cannot combine with is replaced by this build's timings."""
    built = config.get_timing_cache()
    if built is None:
        return None
    if current:
        cache = config.create_timing_cache(current)
        if cache is not None and cache.combine(built, False):
            return bytes(memoryview(cache.serialize()))
        log.warning("the saved timing cache does not combine with this build's; replacing it")
    return bytes(memoryview(built.serialize()))


def update(path: Path, merge: Callable[[bytes | None], bytes | None]) -> None:
    """Replace the cache at `path` with merge(current contents or None), atomically, locked;
    a merge returning None leaves the file as it is."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        current = path.read_bytes() if path.is_file() else None
        data = merge(current)
        if data is None:
            return
        temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        temporary.write_bytes(data)
        os.replace(temporary, path)


def read(path: Path) -> bytes | None:
    return path.read_bytes() if path.is_file() else None
