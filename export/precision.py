"""fp16 through the ONNX graph, not builder flags: which parts stay fp32, and the conversion.

TensorRT 11 dropped the FP16 builder flag; a strongly typed network runs each layer in the type
the graph gives it, on TensorRT 10 and 11 alike. So the graph itself is converted, keeping in
fp32 what loses too much in fp16:

- normalisation statistics (GroupNorm, exported as InstanceNormalization, and LayerNorm) and
  softmax, whose sums overflow or lose their small terms;
- the sinusoidal timestep embedding, whose arguments reach ~1000 where fp16 steps by 0.5 (diffusers
  computes it in fp32 too);
- the whole VAE decoder by default: Stable Diffusion VAEs overflow fp16 in their last blocks;
  and the VAE encoder with it (the SDXL VAE's encoder overflows too, which is why diffusers
  upcasts the VAE before encoding an image).
"""

from __future__ import annotations

import onnx

from sdtrt.engine.options import Precision
from sdtrt.export import fp16

NORM_OPS = ("InstanceNormalization", "GroupNormalization", "LayerNormalization")
FP32_OPS = (*NORM_OPS, "Softmax")
# The timestep embedding is found by its sin and cos; everything feeding them stays fp32.
EMBEDDING_OPS = ("Sin", "Cos")
FP32_BY_DEFAULT = ("vae_decoder", "vae_encoder")
# w8a8 quantizes the UNet, calibrated on its inputs in real runs, where nearly all of an image's
# compute is; the text encoders and VAE compute in the build's float precision.
W8A8_COMPONENTS = ("unet",)


def component_precision(
    component: str,
    asked: Precision,
    fp16_vae: bool = False,
    float_precision: Precision = Precision.FP32,
) -> Precision:
    """The precision `component` is built in when the build asks for `asked`; `fp16_vae` lets
    the VAE follow any reduced precision (fp16, bf16, int8 weights); `float_precision` is what
    w8a8 builds compute their other networks in (bf16 where the CPU has it)."""
    if asked is Precision.W8A8 and component not in W8A8_COMPONENTS:
        asked = float_precision
    if asked is not Precision.FP32 and component in FP32_BY_DEFAULT and not fp16_vae:
        return Precision.FP32
    return asked


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


def to_fp16(model: onnx.ModelProto, fp32_norms: bool = True) -> onnx.ModelProto:
    """The graph with fp16 weights and arithmetic, fp32 where listed above, fp32 inputs/outputs;
    without `fp32_norms`, normalisations compute in fp16 too (for runtimes whose fp16 kernels
    keep their statistics in fp32)."""
    fp16.name_nodes(model.graph)  # nodes are kept in fp32 by name
    keep = FP32_OPS if fp32_norms else tuple(op for op in FP32_OPS if op not in NORM_OPS)
    return fp16.convert(model, keep, embedding_nodes(model.graph))
