"""An fp32 ONNX graph rewritten to compute in fp16, except the nodes the caller keeps in fp32.

Our own pass, so that what a build produces does not depend on which onnxruntime is installed
(converters shipped inside onnxruntime change from release to release, and some releases emit
graphs that break ONNX's single-assignment rule). It relies only on `onnx`:

- every node gets a compute type: fp32 when the caller keeps it, when it only computes shapes
  or constants (nothing it reads depends on a graph input except through Shape: scalar shape
  arithmetic done in float must stay exact), fp16 otherwise;
- each float input a node reads is cast to the node's compute type where it differs, one Cast per
  (tensor, type), shared by every consumer; inputs that must stay fp32 whatever the node computes
  in (Resize's scales) stay fp32;
- weights and constants are stored in the type all their readers want (fp16 when every reader
  computes in fp16, else fp32 with a Cast for the fp16 readers), clamped to fp16's finite range;
- graph inputs and outputs keep their types, so callers feed and read fp32 as before.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from sdtrt.errors import BuildError

FLOAT = TensorProto.FLOAT
FLOAT16 = TensorProto.FLOAT16
FP16_MAX = float(np.finfo(np.float16).max)
# Inputs that the ONNX operator defines as float32 whatever type the data has.
FP32_INPUTS: dict[str, tuple[int, ...]] = {
    "Resize": (1, 2),
    "Upsample": (1,),
    # ONNX Runtime's fused normalisations (export/cuda_fusions.py): scale and bias, whatever
    # type the activations have (its CUDA kernels take no other).
    "GroupNorm": (1, 2),
    "SkipGroupNorm": (1, 2),
}
# A weight's layout change (ONNX Runtime folds it when it loads the graph) computes in the
# type its readers want, though it reads no graph input.
WEIGHT_LAYOUT_OPS = frozenset({"Transpose"})
# Their outputs' types come from the data, never from a float input: they break the chain of
# "depends on a graph input".
SHAPE_OPS = frozenset({"Shape", "Size"})
STANDARD_DOMAINS = ("", "ai.onnx")
# Attributes that hold subgraphs (If, Loop, Scan), which the conversion does not walk into.
SUBGRAPH_ATTRIBUTES = (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
# Nodes that make float data of a type an attribute sets, which the conversion does not rewrite:
# refused where they would have to compute in fp16.
GENERATOR_OPS = (
    "ConstantOfShape",
    "EyeLike",
    "RandomNormal",
    "RandomUniform",
    "RandomNormalLike",
    "RandomUniformLike",
)


def convert(
    model: onnx.ModelProto,
    keep_ops: Iterable[str],
    keep_nodes: Iterable[str],
    base_dir: Path | None = None,
) -> onnx.ModelProto:
    """`model`, modified in place, computing in fp16 except for `keep_ops` and `keep_nodes`.
    Weights in external data (read from `base_dir`, the graph's folder) come in one at a time
    where they become fp16, and stay where they are where they stay fp32."""
    graph = model.graph
    names = [node.name for node in graph.node]
    if "" in names or len(set(names)) != len(names):
        raise BuildError("fp16 conversion needs unique node names; call name_nodes first")
    for node in graph.node:
        if any(a.type in SUBGRAPH_ATTRIBUTES for a in node.attribute):
            raise BuildError(f"fp16 conversion does not support subgraphs ({node.op_type})")
    types = tensor_types(model)
    fp32_nodes = _fp32_nodes(graph, set(keep_ops), set(keep_nodes))
    wants = _wanted_types(graph, types, fp32_nodes)
    stored = _store_sources(graph, types, wants, str(base_dir or ""))
    _Rewriter(graph, types, stored, fp32_nodes).run()
    del graph.value_info[:]  # stale types; inferred again when the graph is saved
    return model


def name_nodes(graph: onnx.GraphProto) -> None:
    """Give every unnamed node a unique name (the exporter leaves some without)."""
    taken = {node.name for node in graph.node}
    for index, node in enumerate(graph.node):
        if not node.name:
            node.name = f"node_{index}"
            while node.name in taken:
                node.name += "_"
            taken.add(node.name)


def tensor_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of every tensor in the graph, from ONNX shape inference.

    Large initializers are emptied for the inference (their dims and types are all it needs), so
    that a multi-gigabyte UNet is not copied."""
    stash = []
    for tensor in model.graph.initializer:
        if len(tensor.raw_data) > 4096:
            stash.append((tensor, tensor.raw_data))
            tensor.ClearField("raw_data")
    try:
        inferred = onnx.shape_inference.infer_shapes(model, data_prop=False).graph
    finally:
        for tensor, data in stash:
            tensor.raw_data = data
    types: dict[str, int] = {}
    for info in (*inferred.input, *inferred.value_info, *inferred.output):
        if info.type.HasField("tensor_type") and info.type.tensor_type.elem_type:
            types[info.name] = info.type.tensor_type.elem_type
    for tensor in model.graph.initializer:
        types[tensor.name] = tensor.data_type
    for node in model.graph.node:
        if node.op_type == "Constant":
            value = next((a.t for a in node.attribute if a.name == "value"), None)
            if value is not None:
                types[node.output[0]] = value.data_type
    _types_past_contrib_nodes(model, types)
    return types


def _types_past_contrib_nodes(model: onnx.ModelProto, types: dict[str, int]) -> None:
    """Fill in `types` where ONNX's inference stopped: it knows no ONNX Runtime contrib node
    (export/cuda_fusions.py), so it types nothing after the first one. Such nodes (all of them
    normalisations, activations or convolutions) give their outputs their first input's type;
    ONNX's own node inference types the standard nodes after them, in one walk in graph order."""
    opset = next(o.version for o in model.opset_import if o.domain in STANDARD_DOMAINS)
    for node in model.graph.node:
        if all(not name or name in types for name in node.output):
            continue
        if node.domain not in STANDARD_DOMAINS:
            first = types.get(node.input[0]) if node.input else None
            for name in node.output:
                if name and first is not None:
                    types[name] = first
            continue
        known = {n: helper.make_tensor_type_proto(types[n], None) for n in node.input if n in types}
        try:
            schema = onnx.defs.get_schema(node.op_type, opset)
            inferred = onnx.shape_inference.infer_node_outputs(schema, node, known)
        except Exception:  # noqa: BLE001 -- a node ONNX cannot type stays untyped, as before
            continue
        for name, proto in inferred.items():
            if proto.tensor_type.elem_type:
                types[name] = proto.tensor_type.elem_type


def _fp32_nodes(graph: onnx.GraphProto, keep_ops: set[str], keep_nodes: set[str]) -> set[str]:
    """Names of the nodes that compute in fp32."""
    active = {t.name for t in graph.input}  # tensors that depend on what the caller feeds
    weights = {t.name for t in graph.initializer}
    result = set()
    for node in graph.node:
        depends = any(name in active for name in node.input)
        if depends and node.op_type not in SHAPE_OPS:
            active.update(node.output)
        relaid = node.op_type in WEIGHT_LAYOUT_OPS and all(n in weights for n in node.input)
        if (not depends and not relaid) or node.op_type in keep_ops or node.name in keep_nodes:
            result.add(node.name)
    return result


def _input_type(node: onnx.NodeProto, index: int, fp32_nodes: set[str]) -> int:
    """The float type `node` needs at input `index`."""
    if node.name in fp32_nodes or index in FP32_INPUTS.get(node.op_type, ()):
        return FLOAT
    return FLOAT16


def _wanted_types(
    graph: onnx.GraphProto, types: dict[str, int], fp32_nodes: set[str]
) -> dict[str, set[int]]:
    """For every float tensor, the types its readers need."""
    wants: dict[str, set[int]] = {}
    for node in graph.node:
        for index, name in enumerate(node.input):
            if name and types.get(name) == FLOAT:
                wants.setdefault(name, set()).add(_input_type(node, index, fp32_nodes))
    return wants


def _to_fp16_array(array: np.ndarray) -> np.ndarray:
    return np.clip(array, -FP16_MAX, FP16_MAX).astype(np.float16)


def _store_sources(
    graph: onnx.GraphProto, types: dict[str, int], wants: dict[str, set[int]], base_dir: str
) -> dict[str, int]:
    """Convert weights and constants that only fp16 readers use; their stored types by name."""
    stored: dict[str, int] = {}
    for tensor in graph.initializer:
        if tensor.data_type == FLOAT and wants.get(tensor.name) == {FLOAT16}:
            fp16 = _to_fp16_array(numpy_helper.to_array(tensor, base_dir))
            tensor.CopyFrom(numpy_helper.from_array(fp16, tensor.name))
        stored[tensor.name] = tensor.data_type
    for node in graph.node:
        if node.op_type != "Constant" or types.get(node.output[0]) != FLOAT:
            continue
        attribute = next((a for a in node.attribute if a.name == "value"), None)
        if attribute is None:
            raise BuildError(f"fp16 conversion: constant {node.name} has no tensor value")
        if wants.get(node.output[0]) == {FLOAT16}:
            fp16 = _to_fp16_array(numpy_helper.to_array(attribute.t))
            attribute.t.CopyFrom(numpy_helper.from_array(fp16))
        stored[node.output[0]] = attribute.t.data_type
    return stored


class _Rewriter:
    """Walks the nodes in order, retyping outputs and inserting the casts inputs need."""

    def __init__(
        self,
        graph: onnx.GraphProto,
        types: dict[str, int],
        stored: dict[str, int],
        fp32_nodes: set[str],
    ) -> None:
        self.graph = graph
        self.types = types
        self.fp32_nodes = fp32_nodes
        # The type each float tensor has after the rewrite; graph inputs keep theirs.
        self.current = {t.name: t.type.tensor_type.elem_type for t in graph.input}
        self.current.update(stored)
        self.casts: dict[tuple[str, int], str] = {}
        self.taken = {name for node in graph.node for name in (*node.input, *node.output)}
        self.taken.update(t.name for t in graph.input)
        self.nodes: list[onnx.NodeProto] = []

    def run(self) -> None:
        for node in self.graph.node:
            self._rewrite(node)
            self.nodes.append(node)
        self._restore_output_types()
        del self.graph.node[:]
        self.graph.node.extend(self.nodes)

    def _rewrite(self, node: onnx.NodeProto) -> None:
        for index, name in enumerate(node.input):
            if name and self.types.get(name) == FLOAT:
                node.input[index] = self._as(name, _input_type(node, index, self.fp32_nodes))
        compute = FLOAT if node.name in self.fp32_nodes else FLOAT16
        if node.op_type == "Cast":
            to = next(a for a in node.attribute if a.name == "to")
            if to.i == FLOAT and compute == FLOAT16:
                to.i = FLOAT16
            self.current[node.output[0]] = to.i
            return
        if node.op_type == "Constant":
            return  # stored already in the type its readers want
        if node.op_type in GENERATOR_OPS and compute == FLOAT16:
            raise BuildError(f"fp16 conversion does not handle {node.op_type} on activations")
        for name in node.output:
            if name and self.types.get(name) == FLOAT:
                self.current[name] = compute

    def _unique(self, base: str) -> str:
        name, suffix = base, 1
        while name in self.taken:
            suffix += 1
            name = f"{base}_{suffix}"
        self.taken.add(name)
        return name

    def _as(self, name: str, wanted: int) -> str:
        """`name`, or a cast of it to `wanted`, made once and shared by every reader."""
        have = self.current.get(name)
        if have is None:
            raise BuildError(f"fp16 conversion: '{name}' is read before it is written")
        if have == wanted:
            return name
        key = (name, wanted)
        if key not in self.casts:
            label = "fp16" if wanted == FLOAT16 else "fp32"
            cast = self._unique(f"{name}_as_{label}")
            self.nodes.append(
                helper.make_node(
                    "Cast", [name], [cast], name=self._unique(f"{cast}_cast"), to=wanted
                )
            )
            self.casts[key] = cast
            self.current[cast] = wanted
        return self.casts[key]

    def _restore_output_types(self) -> None:
        """Graph outputs computed in fp16 get a final cast back to their declared type."""
        for output in self.graph.output:
            declared = output.type.tensor_type.elem_type
            if declared != FLOAT or self.current.get(output.name) != FLOAT16:
                continue
            inner = self._unique(f"{output.name}_fp16")
            for node in self.nodes:
                for items in (node.input, node.output):
                    for index, name in enumerate(items):
                        if name == output.name:
                            items[index] = inner
            self.nodes.append(
                helper.make_node(
                    "Cast",
                    [inner],
                    [output.name],
                    name=self._unique(f"{output.name}_cast"),
                    to=FLOAT,
                )
            )
