"""ONNX Runtime's CUDA kernels for diffusion networks, fused into the exported graph.

onnxruntime-gpu has single kernels for what the exporter spells out in many nodes: GroupNorm
(with its SiLU, and with the residual add before it: SkipGroupNorm), LayerNorm with its residual
(SkipLayerNormalization), GELU, and convolutions in channels-last layout (NhwcConv), which
those normalisations read and write without a transpose in between. ONNX Runtime's own
transformer optimizer finds these patterns; it runs here on the fp32 graph, before the fp16
conversion, which knows the fused nodes (export/fp16/convert.py). Attention is ours already
(export/attention.py), so its attention fusion stays off.

These nodes have CUDA kernels only: a graph fused so runs on the onnxruntime-cuda backend alone,
and the build validates it there against torch like any other.
"""

from __future__ import annotations

import contextlib
import io
from collections import Counter
from collections.abc import Iterator

import onnx

from sdtrt.engine.graph_style import CONTRIB_DOMAIN
from sdtrt.errors import BuildError
from sdtrt.export.attention import OP as ATTENTION_OP

# Weights from this size on are set aside while the optimizer searches for patterns: its shape
# inference copies the model, which is several GB for a UNet in fp32. The constants the patterns
# read (normalisation scales, biases) are far smaller.
SET_ASIDE_BYTES = 1 << 20


def fuse_for_cuda(model: onnx.ModelProto) -> onnx.ModelProto:
    """`model` (fp32) with ONNX Runtime's diffusion fusions applied, in place.

    Two passes: the normalisation and activation patterns on the graph with its weights set
    aside, then the channels-last convolutions, which read the convolution weights."""
    from onnxruntime.transformers.fusion_nhwc_conv import FusionNhwcConv
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.onnx_model_unet import UnetOnnxModel
    from onnxruntime.transformers.optimizer import optimize_model

    options = FusionOptions("unet")
    options.enable_attention = False  # already one MultiHeadAttention node per layer
    options.enable_nhwc_conv = False  # the second pass
    options.enable_bias_add = False  # matches after the channels-last convolutions
    hidden = _hide_unsupported_group_norms(model)
    stash = {}
    for tensor in model.graph.initializer:
        if len(tensor.raw_data) >= SET_ASIDE_BYTES:
            stash[tensor.name] = tensor.raw_data
            tensor.ClearField("raw_data")
    with _quiet():
        optimize_model(model, model_type="unet", opt_level=0, optimization_options=options)
    for tensor in model.graph.initializer:
        if tensor.name in stash:
            tensor.raw_data = stash.pop(tensor.name)
    del stash
    _show(model, hidden)
    with _quiet():
        channels_last = UnetOnnxModel(model)
        channels_last.disable_shape_inference()
        # The weights keep their layout and names (a Transpose node reads each; ONNX Runtime
        # folds it when the engine is made): LoRA switching finds them so, and the export
        # holds no second copy of them.
        FusionNhwcConv(channels_last, update_weight=False).apply()
        channels_last.merge_adjacent_transpose()
        channels_last.fuse_bias_add()
        channels_last.postprocess()
    _sort(model.graph)
    if not any(o.domain == CONTRIB_DOMAIN for o in model.opset_import):
        model.opset_import.append(onnx.helper.make_opsetid(CONTRIB_DOMAIN, 1))
    # Shapes recorded before the fusions no longer hold where they changed the layout; only
    # the attention nodes' (which ONNX cannot infer) are kept.
    contrib_outputs = {o for n in model.graph.node if n.domain == CONTRIB_DOMAIN for o in n.output}
    kept = [info for info in model.graph.value_info if info.name in contrib_outputs]
    del model.graph.value_info[:]
    model.graph.value_info.extend(kept)
    return model


def _hide_unsupported_group_norms(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    """Hide from the search the group norms that ONNX Runtime's CUDA kernel refuses (it needs an
    even number of channels per group), so that they stay as exported: their
    InstanceNormalization reads its scale from a stand-in graph input instead of a constant.
    Returns each stand-in's scale, for `_show`."""
    constants = {t.name: t for t in model.graph.initializer}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    stand_ins: dict[str, onnx.TensorProto] = {}
    for node in model.graph.node:
        if node.op_type != "InstanceNormalization" or node.input[1] not in constants:
            continue
        groups = constants[node.input[1]].dims[0]
        reshapes = [r for r in readers.get(node.output[0], []) if r.op_type == "Reshape"]
        scales = [m for r in reshapes for m in readers.get(r.output[0], []) if m.op_type == "Mul"]
        weights = [i for m in scales for i in m.input if i in constants]
        channels = {constants[i].dims[0] for i in weights if len(constants[i].dims) == 3}
        if any(c % groups or (c // groups) % 2 for c in channels):
            stand_in = f"{node.name}/scale_kept_as_exported"
            stand_ins[stand_in] = onnx.TensorProto()
            stand_ins[stand_in].CopyFrom(constants[node.input[1]])  # the search may drop it
            info = onnx.helper.make_tensor_value_info(stand_in, onnx.TensorProto.FLOAT, [groups])
            model.graph.input.append(info)
            node.input[1] = stand_in
    return stand_ins


def _sort(graph: onnx.GraphProto) -> None:
    """Order the nodes so that each comes after the nodes it reads (the fusions append theirs)."""
    ready = {t.name for t in graph.input} | {t.name for t in graph.initializer} | {""}
    nodes = list(graph.node)
    pending, ordered = list(range(len(nodes))), []
    while pending:
        waiting = []
        for index in pending:
            if all(name in ready for name in nodes[index].input):
                ordered.append(nodes[index])
                ready.update(nodes[index].output)
            else:
                waiting.append(index)
        if len(waiting) == len(pending):
            stuck = nodes[waiting[0]].name
            raise BuildError(f"the fused graph reads tensors nothing writes ({stuck})")
        pending = waiting
    del graph.node[:]
    graph.node.extend(ordered)


def _show(model: onnx.ModelProto, stand_ins: dict[str, onnx.TensorProto]) -> None:
    """Undo `_hide_unsupported_group_norms`."""
    present = {t.name for t in model.graph.initializer}
    for node in model.graph.node:
        for index, name in enumerate(node.input):
            if name in stand_ins:
                scale = stand_ins[name]
                node.input[index] = scale.name
                if scale.name not in present:
                    model.graph.initializer.append(scale)
                    present.add(scale.name)
    inputs = [i for i in model.graph.input if i.name not in stand_ins]
    del model.graph.input[:]
    model.graph.input.extend(inputs)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The optimizer draws a progress bar on stderr and prints what it fuses."""
    with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
        yield


def fused_counts(model: onnx.ModelProto) -> dict[str, int]:
    """How many of each fused node the graph holds (attention, fused at export, aside)."""
    fused = [node for node in model.graph.node if node.domain == CONTRIB_DOMAIN]
    return dict(Counter(node.op_type for node in fused if node.op_type != ATTENTION_OP))
