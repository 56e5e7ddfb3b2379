"""Named initializers of an ONNX file, read with numpy alone (no onnx package at run time).

An ONNX file is a protobuf `ModelProto`; its weights are the `initializer` tensors of its
`graph`. Only the few fields needed are decoded here, straight from the wire format: a tensor's
name, dims, data type and bytes, held in `raw_data` or in the external `.data` file beside a
graph over protobuf's 2 GB limit. The file is memory-mapped, so reading a few tensors of a
multi-GB UNet touches only their bytes.
"""

from __future__ import annotations

import mmap
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from sdtrt.errors import ArtifactError

if TYPE_CHECKING:
    import onnx

# ModelProto.graph, GraphProto.initializer and the TensorProto fields read below.
MODEL_GRAPH, GRAPH_INITIALIZER = 7, 5
DIMS, DATA_TYPE, FLOAT_DATA, NAME, RAW_DATA, EXTERNAL_DATA, DATA_LOCATION = 1, 2, 4, 8, 9, 13, 14
# TensorProto.DataType values for the weight types an exported graph holds.
DATA_TYPES = {1: np.float32, 10: np.float16, 11: np.float64}
VARINT, FIXED64, LENGTH, FIXED32 = 0, 1, 2, 5
# Below protobuf's 2 GB message limit, with room for the graph itself: bigger graphs keep their
# weights in a file beside them.
INLINE_LIMIT = 2**31 - 2**27
# Float tensors from this size on are weights (see weights_as_inputs); smaller ones are the
# constants of the graph's arithmetic.
WEIGHT_BYTES = 1024


def weight_bytes(model: onnx.ModelProto) -> int:
    """Bytes of tensor data in the graph; protobuf refuses even to measure a message over 2 GB."""
    total = sum(len(t.raw_data) for t in model.graph.initializer)
    for node in model.graph.node:
        total += sum(len(a.t.raw_data) for a in node.attribute if a.type == a.TENSOR)
    return total


def _varint(buffer: mmap.mmap | bytes, position: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        byte = buffer[position]
        position += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, position
        shift += 7


def _fields(buffer: mmap.mmap | bytes, start: int, end: int):  # type: ignore[no-untyped-def]
    """(field number, wire type, value or (start, end) of a length-delimited field)."""
    position = start
    while position < end:
        key, position = _varint(buffer, position)
        number, wire = key >> 3, key & 7
        if wire == VARINT:
            value, position = _varint(buffer, position)
            yield number, wire, value
        elif wire == LENGTH:
            size, position = _varint(buffer, position)
            yield number, wire, (position, position + size)
            position += size
        elif wire == FIXED64:
            position += 8
        elif wire == FIXED32:
            position += 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")


@dataclass(frozen=True)
class Located:
    """Where an initializer's values are: a byte range of the ONNX file, or of an external file."""

    name: str
    dtype: np.dtype
    dims: tuple[int, ...]
    start: int
    end: int
    external: str | None = None  # the external data file, relative to the ONNX file


def _locate(buffer: mmap.mmap, start: int, end: int) -> Located:
    name, dims, data_type = "", [], 0
    span: tuple[int, int] | None = None
    external: dict[str, str] = {}
    for number, wire, value in _fields(buffer, start, end):
        if number == NAME:
            name = bytes(buffer[value[0] : value[1]]).decode("utf-8")
        elif number == DIMS and wire == VARINT:
            dims.append(value)
        elif number == DIMS:  # packed
            position = value[0]
            while position < value[1]:
                dim, position = _varint(buffer, position)
                dims.append(dim)
        elif number == DATA_TYPE:
            data_type = value
        elif number == RAW_DATA or (number == FLOAT_DATA and wire == LENGTH and data_type == 1):
            span = value
        elif number == EXTERNAL_DATA:
            entry = {n: bytes(buffer[v[0] : v[1]]).decode() for n, _, v in _fields(buffer, *value)}
            external[entry.get(1, "")] = entry.get(2, "")
    if data_type not in DATA_TYPES:
        raise ValueError(f"initializer {name} has data type {data_type}, not a float type")
    dtype = np.dtype(DATA_TYPES[data_type]).newbyteorder("<")
    if external:
        offset = int(external.get("offset", 0))
        length = int(external["length"])
        return Located(name, dtype, tuple(dims), offset, offset + length, external["location"])
    if span is None:
        raise ValueError(f"initializer {name} stores its values in an unsupported field")
    return Located(name, dtype, tuple(dims), span[0], span[1])


def _read(buffer: mmap.mmap, located: Located, folder: Path) -> np.ndarray:
    if located.external is not None:
        with open(folder / located.external, "rb") as handle:
            handle.seek(located.start)
            raw = handle.read(located.end - located.start)
    else:
        raw = buffer[located.start : located.end]
    return np.frombuffer(raw, dtype=located.dtype).reshape(located.dims).copy()


def locate_initializers(path: Path, names: Collection[str]) -> dict[str, Located]:
    """Where the initializers of `path` named in `names` keep their values."""
    found: dict[str, Located] = {}
    with open(path, "rb") as file, mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as m:
        for located in _walk(m, set(names)):
            found[located.name] = located
    return found


def _walk(m: mmap.mmap, wanted: set[str]) -> Iterator[Located]:
    graphs = [v for n, w, v in _fields(m, 0, len(m)) if n == MODEL_GRAPH and w == LENGTH]
    for graph_start, graph_end in graphs:
        for number, wire, value in _fields(m, graph_start, graph_end):
            if number == GRAPH_INITIALIZER and wire == LENGTH and _peek_name(m, *value) in wanted:
                yield _locate(m, *value)


def read_initializers(path: Path, names: Collection[str]) -> dict[str, np.ndarray]:
    """The float initializers of `path` named in `names`; an ArtifactError if any is missing."""
    wanted = set(names)
    found: dict[str, np.ndarray] = {}
    try:
        with open(path, "rb") as file, mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as m:
            for located in _walk(m, wanted):
                found[located.name] = _read(m, located, path.parent)
    except (OSError, ValueError, KeyError, IndexError) as error:
        raise ArtifactError(
            f"cannot read the weights of {path} ({error}); rebuild the engines with `sdtrt build`"
        ) from error
    missing = wanted - set(found)
    if missing:
        raise ArtifactError(
            f"{path} lacks weights {', '.join(sorted(missing)[:3])}; rebuild the engines"
        )
    return found


def _peek_name(buffer: mmap.mmap, start: int, end: int) -> str:
    """A tensor's name without decoding its data (names come after the bytes in files that
    onnx writes, so this walks the fields but copies nothing)."""
    for number, _, value in _fields(buffer, start, end):
        if number == NAME:
            return bytes(buffer[value[0] : value[1]]).decode("utf-8")
    return ""


def with_initializers(
    path: Path, values: Mapping[str, np.ndarray]
) -> tuple[str | bytes, dict[str, np.ndarray]]:
    """What to open an ONNX Runtime session on so that `values` replace those initializers.

    Values stored inside the file are rewritten in a copy of its bytes: every graph optimisation
    then sees them (ORT's CPU layout pass reads the file's own weights, not overrides given
    through SessionOptions). Values kept in the external data file of a graph over 2 GB are
    returned apart, for `SessionOptions.add_external_initializers`.
    """
    try:
        located = locate_initializers(path, values)
    except (OSError, ValueError, KeyError, IndexError) as error:
        raise ArtifactError(f"cannot read the weights of {path} ({error}); rebuild") from error
    missing = set(values) - set(located)
    if missing:
        raise ArtifactError(f"{path} lacks weights {', '.join(sorted(missing)[:3])}; rebuild")
    external = {n: values[n] for n, where in located.items() if where.external is not None}
    inline = [where for where in located.values() if where.external is None]
    if not inline:
        return str(path), external
    data = bytearray(path.read_bytes())
    for where in inline:
        new = np.ascontiguousarray(values[where.name], dtype=where.dtype).tobytes()
        if len(new) != where.end - where.start:
            raise ArtifactError(f"new values for {where.name} do not fit its shape {where.dims}")
        data[where.start : where.end] = new
    return bytes(data), external


def weights_as_inputs(
    model: onnx.ModelProto, keep: Collection[str] = ()
) -> tuple[onnx.ModelProto, list[onnx.TensorProto]]:
    """A copy of `model` whose weights (float tensors of WEIGHT_BYTES or more, or kept in an
    external data file, except those named in `keep`) are graph inputs of the same names and
    shapes, and those weights: the copy is small whatever the graph's size, and nothing computed
    from a weight is folded or rewritten in it."""
    import onnx

    floats = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)
    light = onnx.ModelProto()
    light.ir_version = model.ir_version
    light.opset_import.extend(model.opset_import)
    graph = light.graph
    graph.name = model.graph.name
    for field in ("node", "input", "output", "value_info"):
        getattr(graph, field).extend(getattr(model.graph, field))
    weights = []
    for tensor in model.graph.initializer:
        if (
            tensor.data_type in floats
            and tensor.name not in keep
            and (
                tensor.data_location == onnx.TensorProto.EXTERNAL
                or len(tensor.raw_data) >= WEIGHT_BYTES
            )
        ):
            weights.append(tensor)
            graph.input.append(
                onnx.helper.make_tensor_value_info(tensor.name, tensor.data_type, tensor.dims)
            )
        else:
            graph.initializer.append(tensor)
    return light, weights
