"""Tensors from a file `torch.save` wrote (`.pt`, `.bin`), without torch: for textual-inversion
embeddings, which the A1111 web UI and diffusers' training scripts long saved that way.

Such a file is a zip: `<name>/data.pkl`, a pickle of the saved object whose tensors point by key
at raw storages `<name>/data/<key>`. A pickle can name any Python callable to run as it loads,
so this unpickler allows only what a saved tensor needs (torch's rebuild functions and storage
types, which it maps to numpy) and plain containers; anything else stops the read. Files are
read only when the user allows pickles (`--allow-pickle`) even so.
"""

from __future__ import annotations

import collections
import io
import pickle
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

# torch's storage types as numpy dtypes; bfloat16, which numpy lacks, is read as its top half of
# a float32.
STORAGES: dict[str, np.dtype[Any]] = {
    "FloatStorage": np.dtype("<f4"),
    "HalfStorage": np.dtype("<f2"),
    "DoubleStorage": np.dtype("<f8"),
    "BFloat16Storage": np.dtype("<u2"),
}


class _Module:
    """What a pickled torch module (an old embedding's `ParameterDict`) becomes: its state."""

    _parameters: dict[str, Any]


def _bfloat16(storage: np.ndarray) -> np.ndarray:
    return (storage.astype(np.uint32) << 16).view(np.float32)


def _rebuild_tensor(
    storage: tuple[np.ndarray, str], offset: int, size: tuple[int, ...], stride: tuple[int, ...],
    *_: Any,
) -> np.ndarray:  # fmt: skip
    """torch._utils._rebuild_tensor_v2: a view of `storage`, copied out. Its size and strides
    are checked to stay inside the storage first: a view past its end would read memory the
    file does not hold."""
    data, kind = storage
    shape_ok = all(isinstance(n, int) and n >= 0 for n in (offset, *size, *stride))
    if not shape_ok or len(size) != len(stride):
        raise ValueError("a tensor with a malformed size or stride")
    last = offset + sum((n - 1) * step for n, step in zip(size, stride, strict=True))
    if 0 not in size and last >= len(data):
        raise ValueError("a tensor that reaches past its storage")
    item = data.itemsize
    view = np.lib.stride_tricks.as_strided(
        data[offset:], shape=size, strides=tuple(s * item for s in stride)
    )
    array = np.array(view)
    return _bfloat16(array) if kind == "BFloat16Storage" else array


def _rebuild_parameter(data: np.ndarray, *_: Any) -> np.ndarray:
    return data


ALLOWED: dict[tuple[str, str], Callable[..., Any] | type] = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("collections", "OrderedDict"): collections.OrderedDict,
    # Python 2's name for the builtins, which pickle protocol 2 writes.
    ("__builtin__", "set"): set,
    ("builtins", "set"): set,
    ("torch.nn.modules.container", "ParameterDict"): _Module,
}


class _Unpickler(pickle.Unpickler):
    def __init__(self, archive: zipfile.ZipFile, root: str, data: bytes) -> None:
        super().__init__(io.BytesIO(data))
        self.archive, self.root = archive, root

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch" and name in STORAGES:
            return name
        allowed = ALLOWED.get((module, name))
        if allowed is None:
            raise pickle.UnpicklingError(f"it asks to run {module}.{name}, which is not allowed")
        return allowed

    def persistent_load(self, pid: Any) -> tuple[np.ndarray, str]:
        """('storage', type, key, location, count): the storage's raw bytes."""
        if not (isinstance(pid, tuple) and pid[:1] == ("storage",) and pid[1] in STORAGES):
            raise pickle.UnpicklingError(f"it holds a storage sdtrt does not read ({pid!r:.60})")
        kind, key = pid[1], pid[2]
        raw = self.archive.read(f"{self.root}/data/{key}")
        return np.frombuffer(raw, dtype=STORAGES[kind]), kind


def load_torch_file(path: Path) -> Any:
    """The object saved in `path` by `torch.save` (zip format, torch >= 1.6), tensors as numpy
    arrays and pickled modules as their state. ValueError for anything else."""
    try:
        with zipfile.ZipFile(path) as archive:
            pickles = [n for n in archive.namelist() if n.endswith("/data.pkl")]
            if len(pickles) != 1:
                raise ValueError("not a torch.save zip file (no single data.pkl)")
            root = pickles[0].rsplit("/", 1)[0]
            if f"{root}/byteorder" in archive.namelist():
                if archive.read(f"{root}/byteorder").strip() != b"little":
                    raise ValueError("saved big-endian")
            return _Unpickler(archive, root, archive.read(pickles[0])).load()
    except zipfile.BadZipFile as error:
        raise ValueError("not a torch.save zip file (older torch's format?)") from error
    except (pickle.UnpicklingError, EOFError, KeyError, AttributeError, TypeError) as error:
        raise ValueError(f"cannot be unpickled safely: {error}") from error


def parameters(value: Any) -> dict[str, Any]:
    """A container of tensors as a plain dict: a pickled `ParameterDict`'s parameters."""
    if isinstance(value, _Module):
        return dict(getattr(value, "_parameters", {}))
    return dict(value) if isinstance(value, dict) else {}
