"""How an exported graph is written for a backend, and the facts of graphs so written.

Plain ONNX suits every backend; ONNX Runtime runs faster on graphs that spell out its own fused
nodes (its contrib domain): one attention node, and on its CUDA provider the diffusion kernels
(GroupNorm, channels-last convolutions, ...), which have CUDA kernels only. The export writes what
a backend's `graph_style` asks for; whoever runs such a graph outside that backend (the fp16
guard, `sdtrt debug compare`) reads here what it holds.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:
    import onnx


class GraphStyle(BaseModel):
    """How the exported graph is written for one backend: what its runtime fuses by itself and
    what it needs spelled out."""

    model_config = ConfigDict(frozen=True)

    # Attention as ONNX Runtime's MultiHeadAttention node (export/attention.py).
    fused_attention: bool = False
    # In fp16 graphs, normalisations computed in fp32 islands (export/fp16/policy.py); not for a
    # runtime whose fp16 normalisation kernels keep their statistics in fp32 anyway.
    fp32_norms: bool = True
    # ONNX Runtime's CUDA-only fused kernels (GroupNorm, NhwcConv, ...: export/cuda_fusions.py).
    cuda_fusions: bool = False


# ONNX Runtime's operator domain for its contrib nodes.
CONTRIB_DOMAIN = "com.microsoft"
# ONNX Runtime contrib nodes that only its CUDA provider runs (export/cuda_fusions.py).
CUDA_ONLY_OPS = frozenset({"GroupNorm", "SkipGroupNorm", "NhwcConv", "BiasSplitGelu", "BiasAdd"})


def _runs_on_cuda_only(node: onnx.NodeProto) -> bool:
    return node.op_type in CUDA_ONLY_OPS and node.domain == CONTRIB_DOMAIN


def cuda_only(graph: onnx.GraphProto) -> bool:
    """Whether `graph` holds nodes that run on ONNX Runtime's CUDA provider alone."""
    return any(_runs_on_cuda_only(node) for node in graph.node)


def kernel_constants(graph: onnx.GraphProto) -> set[str]:
    """The weights that ONNX Runtime's CUDA-only kernels must get as constants: they lay them out
    when the session starts (NhwcConv takes its weight as channels-last only then; GroupNorm
    sizes its blocks from its scale), so such a weight fed as an input is misread. A weight
    reaching NhwcConv through a Transpose counts too (see fold_weight_layouts)."""
    producers = {output: node for node in graph.node for output in node.output}
    names = set()
    for node in filter(_runs_on_cuda_only, graph.node):
        for name in node.input[1:]:
            source = producers.get(name)
            if source is not None and source.op_type == "Transpose":
                names.update(source.input)
            else:
                names.add(name)
    return names


def fold_weight_layouts(model: onnx.ModelProto) -> None:
    """Replace each Transpose of a constant with the transposed constant, as ONNX Runtime does
    when it optimises a graph: in a session that does not (every tensor compared, in `sdtrt
    debug compare`), NhwcConv would read a computed weight, which it takes as not channels-last."""
    from onnx import numpy_helper

    constants = {t.name: t for t in model.graph.initializer}
    kept = []
    for node in model.graph.node:
        if node.op_type != "Transpose" or node.input[0] not in constants:
            kept.append(node)
            continue
        perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), None)
        array = numpy_helper.to_array(constants[node.input[0]])
        folded = np.ascontiguousarray(np.transpose(array, perm))
        model.graph.initializer.append(numpy_helper.from_array(folded, node.output[0]))
    del model.graph.node[:]
    model.graph.node.extend(kept)
    read = {name for node in kept for name in node.input}
    used = [t for t in model.graph.initializer if t.name in read]  # the untransposed ones go
    del model.graph.initializer[:]
    model.graph.initializer.extend(used)
