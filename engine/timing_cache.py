"""A TensorRT timing cache kept beside the engines and shared by builds, one writer at a time.

Builds read the cache, add what they timed, and write it back whole (through a rename) under an
exclusive lock, so two builds at once each see a valid cache and neither loses the other's work.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable
from pathlib import Path


def update(path: Path, merge: Callable[[bytes | None], bytes]) -> None:
    """Replace the cache at `path` with merge(current contents or None), atomically, locked."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        current = path.read_bytes() if path.is_file() else None
        data = merge(current)
        temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        temporary.write_bytes(data)
        os.replace(temporary, path)


def read(path: Path) -> bytes | None:
    return path.read_bytes() if path.is_file() else None
