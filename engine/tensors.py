"""Torch-free descriptions of a network's tensors, and the checks every engine call goes through.

A dimension is either a fixed size or a symbolic name ("batch", "latent_height", ...). The same
name in several inputs means the same size. A profile gives, per input, the smallest, typical and
largest shape the engine was built for: ONNX Runtime accepts anything, but every backend refuses
what is outside the profile so that behaviour does not depend on the backend.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict

from sdtrt.errors import InputError

Dim = int | str
# The CLIP text encoders' second input: rows of token embeddings appended to the model's own
# table, the ids past its vocabulary picking them (textual-inversion embeddings, loaded at run
# time); at least one row, zeros where none is loaded, and at most this many.
ADDED_EMBEDDINGS = "added_embeddings"
MAX_ADDED_TOKENS = 64
Shape = tuple[int, ...]
# A network's inputs by name; several of them (w8a8 builds calibrate on those met in real runs).
Feed = Mapping[str, np.ndarray]
Feeds = Sequence[Feed]


class TensorSpec(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    dtype: str  # numpy dtype name, e.g. "float32", "int32"
    shape: tuple[Dim, ...]


class ShapeRange(BaseModel):
    model_config = ConfigDict(frozen=True)

    min: Shape
    opt: Shape
    max: Shape

    def contains(self, shape: Shape) -> bool:
        return len(shape) == len(self.min) and all(
            lo <= s <= hi for lo, s, hi in zip(self.min, shape, self.max, strict=True)
        )


class ComponentIO(BaseModel):
    """A network's inputs, outputs and build profile: what builds, engines and checks read."""

    model_config = ConfigDict(frozen=True)

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    profile: dict[str, ShapeRange]

    def input(self, name: str) -> TensorSpec:
        return next(t for t in self.inputs if t.name == name)


def check_feeds(component: str, io: ComponentIO, feeds: Mapping[str, np.ndarray]) -> None:
    """Raise InputError unless `feeds` match `io`: names, dtypes, ranks, shared dims, profile."""
    expected = {t.name for t in io.inputs}
    if set(feeds) != expected:
        raise InputError(f"{component}: expected inputs {sorted(expected)}, got {sorted(feeds)}")
    bound: dict[str, tuple[int, str]] = {}
    for spec in io.inputs:
        array = feeds[spec.name]
        if array.dtype != np.dtype(spec.dtype):
            raise InputError(
                f"{component}: input '{spec.name}' must be {spec.dtype}, got {array.dtype}"
            )
        if array.ndim != len(spec.shape):
            raise InputError(
                f"{component}: input '{spec.name}' must have {len(spec.shape)} dimensions, "
                f"got shape {tuple(array.shape)}"
            )
        for axis, (dim, size) in enumerate(zip(spec.shape, array.shape, strict=True)):
            if isinstance(dim, int):
                if size != dim:
                    raise InputError(
                        f"{component}: input '{spec.name}' needs size {dim} on axis {axis}, "
                        f"got shape {tuple(array.shape)}"
                    )
                continue
            if dim in bound and bound[dim][0] != size:
                size0, where = bound[dim]
                raise InputError(
                    f"{component}: '{dim}' is {size0} in '{where}' but {size} in '{spec.name}'"
                )
            bound[dim] = (size, spec.name)
        allowed = io.profile.get(spec.name)
        if allowed is not None and not allowed.contains(tuple(array.shape)):
            raise InputError(
                f"{component}: input '{spec.name}' shape {tuple(array.shape)} is outside the "
                f"built range {allowed.min}..{allowed.max}; rebuild with a wider range"
            )
