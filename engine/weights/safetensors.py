"""Reading .safetensors files with numpy alone, bfloat16 included.

The format is an 8-byte little-endian header length, a JSON header giving each tensor's dtype,
shape and byte range (plus an optional `__metadata__` of strings), then the bytes. Reading it
here keeps the runtime free of torch, and numpy has no bfloat16, in which many LoRAs ship.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sdtrt.errors import InputError

NUMPY_TYPES = {
    "F64": np.float64,
    "F32": np.float32,
    "F16": np.float16,
    "I64": np.int64,
    "I32": np.int32,
    "I16": np.int16,
    "I8": np.int8,
    "U8": np.uint8,
    "BOOL": np.bool_,
}
BFLOAT16 = "BF16"
# A header larger than this is not a safetensors file (the format caps it at 100 MB).
MAX_HEADER = 100_000_000


@dataclass(frozen=True)
class TensorEntry:
    dtype: str
    shape: tuple[int, ...]
    start: int  # byte offsets into the data section
    end: int


class SafetensorsFile:
    """The header of a .safetensors file; tensors are read one at a time, on demand."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            with open(path, "rb") as handle:
                size_bytes = handle.read(8)
                (size,) = struct.unpack("<Q", size_bytes) if len(size_bytes) == 8 else (0,)
                if not 0 < size <= MAX_HEADER:
                    raise ValueError("no safetensors header")
                header = json.loads(handle.read(size).decode("utf-8"))
        except OSError as error:
            raise InputError(f"cannot read {path}: {error.strerror}") from error
        except (ValueError, UnicodeDecodeError) as error:
            raise InputError(f"{path} is not a .safetensors file ({error})") from error
        if not isinstance(header, dict):
            raise InputError(f"{path} is not a .safetensors file (its header is not a table)")
        self._data_start = 8 + size
        metadata = header.pop("__metadata__", None) or {}
        self.metadata: dict[str, str] = {str(k): str(v) for k, v in metadata.items()}
        self.entries: dict[str, TensorEntry] = {}
        for name, entry in header.items():
            try:
                start, end = (int(v) for v in entry["data_offsets"])
                self.entries[name] = TensorEntry(
                    str(entry["dtype"]), tuple(int(d) for d in entry["shape"]), start, end
                )
            except (KeyError, TypeError, ValueError) as error:
                raise InputError(f"{path} has a damaged entry for tensor {name!r}") from error

    def keys(self) -> list[str]:
        return list(self.entries)

    def shape(self, name: str) -> tuple[int, ...]:
        return self.entries[name].shape

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Every tensor's shape by name, from the header alone."""
        return {name: entry.shape for name, entry in self.entries.items()}

    def read(self, name: str) -> np.ndarray:
        """Tensor `name` as a numpy array; bfloat16 comes back as float32 (exactly)."""
        entry = self.entries[name]
        with open(self.path, "rb") as handle:
            handle.seek(self._data_start + entry.start)
            raw = handle.read(entry.end - entry.start)
        count = int(np.prod(entry.shape, dtype=np.int64))
        if entry.dtype == BFLOAT16:
            if len(raw) != 2 * count:
                raise InputError(f"{self.path} is truncated at tensor {name!r}")
            # bfloat16 is the top half of a float32.
            return (
                (np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16)
                .view(np.float32)
                .reshape(entry.shape)
            )
        dtype = NUMPY_TYPES.get(entry.dtype)
        if dtype is None:
            raise InputError(f"{self.path}: tensor {name!r} has unsupported dtype {entry.dtype}")
        array = np.frombuffer(raw, dtype=np.dtype(dtype).newbyteorder("<"))
        if array.size != count:
            raise InputError(f"{self.path} is truncated at tensor {name!r}")
        return array.reshape(entry.shape)
