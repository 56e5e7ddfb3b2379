"""A torch module's weights written into its exported graph, one tensor at a time.

The graph is traced with the module's parameters as graph inputs (`export_params=False`), so that
neither the exporter nor the graph cleanup ever holds a second copy of the weights. Here those
inputs become initializers again, their values read from the module: small ones inline before
the cleanup (folding may use them, as it uses any small constant), the rest after it, written
straight from the module's memory into the ONNX external data file beside the graph. A build's
peak is then about the module itself, whatever the network's size.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import BinaryIO

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from sdtrt.engine.weights import initializers

# External data offsets are aligned so that a reader can map each tensor on its own (64 KiB:
# the allocation granularity of every platform's mmap).
ALIGNMENT = 2**16


def parameter_inputs(
    model: onnx.ModelProto, state: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """The graph inputs that are the module's parameters or buffers (`state`, its state dict),
    with their tensors. The exporter names them as the state dict does (a value two parameters
    share keeps the first one's name)."""
    return {i.name: state[i.name] for i in model.graph.input if i.name in state}


def _array(tensor: torch.Tensor, fp16: bool = False) -> np.ndarray:
    """The tensor's values as numpy, sharing its memory where it is contiguous: in fp32, as the
    graph reads them (a module loaded in 16 bits is traced in fp32: lean.py), or kept in fp16
    where the graph stores fp16 weights."""
    if tensor.dtype == torch.float16 and fp16:
        return tensor.contiguous().numpy()
    if tensor.dtype in (torch.float16, torch.bfloat16):
        return tensor.float().numpy()
    return tensor.contiguous().numpy()


def inline_small(model: onnx.ModelProto, tensors: Mapping[str, torch.Tensor]) -> None:
    """Turn the parameter inputs smaller than a weight (engine.weights.initializers's
    WEIGHT_BYTES) into initializers, so that the cleanup folds what they feed."""
    limit = initializers.WEIGHT_BYTES
    small = {n for n, t in tensors.items() if _traced_bytes(t) < limit}
    _attach(model, small, lambda name: numpy_helper.from_array(_array(tensors[name]), name))


def attach_weights(
    model: onnx.ModelProto,
    tensors: Mapping[str, torch.Tensor],
    data_path: Path | None,
    fp16: bool = False,
) -> None:
    """Turn the remaining parameter inputs into initializers: inline when `data_path` is None,
    else appended to `data_path` as ONNX external data (located relative to the graph, which
    must be saved in the same folder). Inputs no node reads any more are dropped.

    With `fp16`, float weights are stored in fp16 (clamped to its range) and cast back to fp32
    where the graph reads them: for a backend that computes in a 16-bit type anyway (OpenVINO's
    bf16), which then holds half the bytes while it reads and compiles the graph."""
    names = {i.name for i in model.graph.input if i.name in tensors}

    def value(name: str) -> np.ndarray:
        array = _array(tensors[name], fp16)
        return _to_fp16(array) if fp16 and array.dtype == np.float32 else array

    if data_path is None:
        _attach(model, names, lambda name: numpy_helper.from_array(value(name), name))
    else:
        with open(data_path, "wb") as data:
            external = _External(data, data_path.name)
            _attach(model, names, lambda name: external.write(name, value(name)))
    if fp16:
        _cast_to_fp32(model.graph)


def _to_fp16(array: np.ndarray) -> np.ndarray:
    limit = float(np.finfo(np.float16).max)
    return np.clip(array, -limit, limit).astype(np.float16)


def _cast_to_fp32(graph: onnx.GraphProto) -> None:
    """A Cast to fp32 after every fp16 initializer, read by the nodes in its place."""
    stored = [t.name for t in graph.initializer if t.data_type == onnx.TensorProto.FLOAT16]
    cast = {name: f"{name}.fp32" for name in stored}
    for node in graph.node:
        for index, name in enumerate(node.input):
            if name in cast:
                node.input[index] = cast[name]
    casts = [
        onnx.helper.make_node("Cast", [name], [out], name=out, to=onnx.TensorProto.FLOAT)
        for name, out in cast.items()
    ]
    nodes = [*casts, *graph.node]
    del graph.node[:]
    graph.node.extend(nodes)


def tensor_bytes(tensors: Mapping[str, torch.Tensor]) -> int:
    return sum(_traced_bytes(t) for t in tensors.values())


def _traced_bytes(tensor: torch.Tensor) -> int:
    """Its bytes in the traced graph, where floats are fp32 whatever the module holds."""
    size = 4 if tensor.is_floating_point() else tensor.element_size()
    return tensor.numel() * size


def _attach(
    model: onnx.ModelProto, names: set[str], make: Callable[[str], onnx.TensorProto]
) -> None:
    graph = model.graph
    read = {name for node in graph.node for name in node.input}
    kept = [i for i in graph.input if i.name not in names]
    del graph.input[:]
    graph.input.extend(kept)
    for name in _in_graph_order(graph, names & read):
        graph.initializer.append(make(name))


def _in_graph_order(graph: onnx.GraphProto, names: set[str]) -> Iterator[str]:
    seen = set()
    for node in graph.node:
        for name in node.input:
            if name in names and name not in seen:
                seen.add(name)
                yield name


class _External:
    """Tensors appended to one external data file, each at an aligned offset."""

    def __init__(self, handle: BinaryIO, location: str) -> None:
        self._handle = handle
        self._location = location
        self._offset = 0

    def write(self, name: str, array: np.ndarray) -> onnx.TensorProto:
        handle = self._handle
        padding = -self._offset % ALIGNMENT
        handle.write(b"\0" * padding)
        self._offset += padding
        handle.write(np.ascontiguousarray(array).data)
        tensor = onnx.TensorProto(name=name, dims=array.shape)
        tensor.data_type = onnx.helper.np_dtype_to_tensor_dtype(array.dtype)
        tensor.data_location = onnx.TensorProto.EXTERNAL
        for key, value in (
            ("location", self._location),
            ("offset", str(self._offset)),
            ("length", str(array.nbytes)),
        ):
            entry = tensor.external_data.add()
            entry.key, entry.value = key, value
        self._offset += array.nbytes
        return tensor
