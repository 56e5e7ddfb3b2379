"""fp16 through the ONNX graph, not builder flags: which nodes stay fp32.

TensorRT 11 dropped the FP16 builder flag; a strongly typed network runs each layer in the type
the graph gives it, on TensorRT 10 and 11 alike. So the graph itself is converted (convert.py),
keeping in fp32 what loses too much in fp16:

- normalisation statistics (GroupNorm, exported as InstanceNormalization, and LayerNorm) and
  softmax, whose sums overflow or lose their small terms;
- the sinusoidal timestep embedding, whose arguments reach ~1000 where fp16 steps by 0.5 (diffusers
  computes it in fp32 too).

Which networks are converted at all is the build's choice (export/precision.py): the VAE stays
fp32 unless asked.
"""

from __future__ import annotations

from pathlib import Path

import onnx

from sdtrt.export.fp16 import convert

NORM_OPS = ("InstanceNormalization", "GroupNormalization", "LayerNormalization")
FP32_OPS = (*NORM_OPS, "Softmax")
# The timestep embedding is found by its sin and cos; everything feeding them stays fp32.
EMBEDDING_OPS = ("Sin", "Cos")


def embedding_nodes(graph: onnx.GraphProto) -> set[str]:
    """Names of the nodes that compute the inputs of sin/cos, back to the graph's inputs."""
    producer = {output: node for node in graph.node for output in node.output}
    names = {node.name for node in graph.node if node.op_type in EMBEDDING_OPS}
    pending = [i for node in graph.node if node.op_type in EMBEDDING_OPS for i in node.input]
    while pending:
        node = producer.get(pending.pop())
        if node is None or node.name in names:
            continue
        names.add(node.name)
        pending.extend(node.input)
    return names


def to_fp16(
    model: onnx.ModelProto, fp32_norms: bool = True, base_dir: Path | None = None
) -> onnx.ModelProto:
    """The graph with fp16 weights and arithmetic, fp32 where listed above, fp32 inputs/outputs;
    without `fp32_norms`, normalisations compute in fp16 too (for runtimes whose fp16 kernels
    keep their statistics in fp32). External weights are read from `base_dir`."""
    convert.name_nodes(model.graph)  # nodes are kept in fp32 by name
    keep = FP32_OPS if fp32_norms else tuple(op for op in FP32_OPS if op not in NORM_OPS)
    return convert.convert(model, keep, embedding_nodes(model.graph), base_dir)
