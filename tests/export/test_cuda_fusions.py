"""ONNX Runtime's fused CUDA kernels in the onnxruntime-cuda export (export/cuda_fusions.py).

These nodes have no CPU kernels: here, what can be proven without a GPU (every normalisation
and convolution fused, fp16 weights and arithmetic in the fused nodes, a valid graph, the LoRA
weight map); tests/gpu runs the graphs against torch."""

import collections

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from sdtrt.engine.graph_style import CONTRIB_DOMAIN, GraphStyle, cuda_only
from sdtrt.engine.onnxruntime.cuda import OnnxRuntimeCudaBackend
from sdtrt.engine.options import BuildOptions, Precision
from sdtrt.engine.ranges import resolve_ranges
from sdtrt.export.families import load_family
from sdtrt.export.fp16 import convert as fp16
from sdtrt.export.fp16.guard import GuardOptions
from sdtrt.export.lora_merge import record_lora_weights
from sdtrt.export.onnx_export import export_onnx

CUDA_STYLE = OnnxRuntimeCudaBackend.graph_style
PLAIN_CUDA = CUDA_STYLE.model_copy(update={"cuda_fusions": False})
NETWORKS = ("text_encoder", "unet", "vae_decoder", "vae_encoder")


@pytest.fixture(scope="module")
def tiny_exports(tiny_model_dir, tmp_path_factory):
    """network -> (spec, inputs); exported on demand by `export`."""
    family = load_family(tiny_model_dir, "tiny")
    ranges = resolve_ranges(BuildOptions(), family.info().native_size, family.vae_scale_factor)
    specs = {s.name: s for s in family.specs(NETWORKS)}
    folder = tmp_path_factory.mktemp("fusions")

    def export(network, precision, style, guard=None):
        spec = specs[network]
        inputs = spec.sample_inputs(spec.opt_point(ranges), np.random.default_rng(0))
        path = folder / f"{network}-{precision.value}-{hash(style)}-{guard is not None}.onnx"
        export_onnx(spec, inputs, path, precision=precision, style=style, guard=guard)
        return spec, inputs, onnx.load(str(path)), path

    return export


def _ops(model):
    return collections.Counter(node.op_type for node in model.graph.node)


@pytest.mark.parametrize("precision", [Precision.FP32, Precision.FP16])
@pytest.mark.parametrize("network", ["unet", "vae_decoder", "vae_encoder"])
def test_group_norms_the_kernel_takes_and_every_convolution_are_fused(
    tiny_exports, network, precision
):
    *_, plain, _ = tiny_exports(network, precision, PLAIN_CUDA)
    spec, _, fused, _ = tiny_exports(network, precision, CUDA_STYLE)
    before, after = _ops(plain), _ops(fused)
    assert before["InstanceNormalization"] > 0 and before["Conv"] > 0
    norms = [n for n in fused.graph.node if n.op_type in ("GroupNorm", "SkipGroupNorm")]
    shapes = {t.name: tuple(t.dims) for t in fused.graph.initializer}
    for node in norms:  # the CUDA kernel needs an even number of channels per group
        groups = next(a.i for a in node.attribute if a.name == "groups")
        assert (shapes[node.input[1]][0] // groups) % 2 == 0, node.name
    # Left as exported: group norms of an odd number of channels per group (the tiny models'
    # 32 groups of 32 channels), and the VAE's attention norm (it normalises before reshaping
    # to tokens, a pattern not fused).
    exported = {"vae_decoder": "inner.decoder.", "vae_encoder": "inner.encoder."}.get(network, "")
    kept = [
        name
        for name, module in spec.module().named_modules()
        if isinstance(module, torch.nn.GroupNorm)
        and name.startswith(exported)
        and ((module.num_channels // module.num_groups) % 2 or name.endswith(".group_norm"))
    ]
    assert after["InstanceNormalization"] == len(kept) < before["InstanceNormalization"]
    assert len(norms) + len(kept) == before["InstanceNormalization"]
    fused_norms = len(norms)
    assert fused_norms > 0 and after["NhwcConv"] == before["Conv"] and after["Conv"] == 0
    assert after["MultiHeadAttention"] == before["MultiHeadAttention"]
    assert cuda_only(fused.graph) and not cuda_only(plain.graph)


def test_the_text_encoder_fuses_its_layer_norms(tiny_exports):
    *_, plain, _ = tiny_exports("text_encoder", Precision.FP16, PLAIN_CUDA)
    *_, fused, _ = tiny_exports("text_encoder", Precision.FP16, CUDA_STYLE)
    norms = _ops(plain)["LayerNormalization"]
    after = _ops(fused)
    assert after["SkipLayerNormalization"] > 0
    assert after["LayerNormalization"] + after["SkipLayerNormalization"] == norms


@pytest.mark.parametrize("network", ["unet", "vae_decoder"])
def test_fused_fp16_graphs_compute_in_fp16(tiny_exports, network):
    """Every fused node reads fp16 activations and fp16 weights: nothing the fp16 conversion
    could not type is left in fp32."""
    *_, model, _ = tiny_exports(network, Precision.FP16, CUDA_STYLE)
    types = fp16.tensor_types(model)
    fused = [n for n in model.graph.node if n.domain == CONTRIB_DOMAIN]
    assert fused
    for node in fused:
        for index, name in enumerate(node.input):
            if name:
                # The normalisations' scale and bias: fp32, the only type their kernels take.
                kept = index in fp16.FP32_INPUTS.get(node.op_type, ())
                wanted = TensorProto.FLOAT if kept else TensorProto.FLOAT16
                assert types[name] == wanted, (node.op_type, name)
        assert types[node.output[0]] == TensorProto.FLOAT16, node.op_type
    fp32_weights = [t.name for t in model.graph.initializer
                    if t.data_type == TensorProto.FLOAT and len(t.dims) == 4]  # fmt: skip
    assert fp32_weights == []


def test_the_fp16_guard_keeps_the_plain_graph(tiny_exports, tmp_path):
    """The guard runs the graph on the CPU layer by layer, where fused kernels do not exist."""
    spec, inputs, *_ = tiny_exports("unet", Precision.FP32, PLAIN_CUDA)
    guard = GuardOptions(feeds=(inputs,), tolerance=1e-2, reference=tmp_path / "reference.onnx")
    *_, guarded, _ = tiny_exports("unet", Precision.FP16, CUDA_STYLE, guard=guard)
    assert not cuda_only(guarded.graph)
    assert _ops(guarded)["InstanceNormalization"] > 0


def test_conversion_types_what_follows_a_contrib_node():
    """ONNX's inference knows no ONNX Runtime contrib node and stops typing at the first one;
    the fp16 conversion must still know every float tensor after it."""
    nodes = [
        helper.make_node(
            "GroupNorm",
            ["x", "gamma", "beta"],
            ["normed"],
            domain=CONTRIB_DOMAIN,
            epsilon=1e-5,
            groups=2,
            activation=1,
            channels_last=1,
        ),  # fmt: skip
        helper.make_node("Relu", ["normed"], ["relu"]),
        helper.make_node("Shape", ["relu"], ["shape"]),
        helper.make_node("Mul", ["relu", "relu"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 2, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 2, 4])],
        [
            helper.make_tensor("gamma", TensorProto.FLOAT, [4], [1.0] * 4),
            helper.make_tensor("beta", TensorProto.FLOAT, [4], [0.0] * 4),
        ],  # fmt: skip
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(CONTRIB_DOMAIN, 1)]
    )
    types = fp16.tensor_types(model)
    assert types["normed"] == types["relu"] == TensorProto.FLOAT
    assert types["shape"] == TensorProto.INT64
    fp16.name_nodes(model.graph)
    converted = fp16.convert(model, (), ())
    by_name = {t.name: t for t in converted.graph.initializer}
    assert by_name["gamma"].data_type == by_name["beta"].data_type == TensorProto.FLOAT
    [mul] = [n for n in converted.graph.node if n.op_type == "Mul"]
    assert mul.output[0] != "y"  # computed in fp16, then cast back to the declared fp32


def test_convolution_weights_keep_their_layout_and_names(tiny_exports, tmp_path):
    """NhwcConv reads each weight through a Transpose (folded when ONNX Runtime loads the
    graph), so the LoRA weight map still finds every convolution weight as exported."""
    import json

    spec, _, model, path = tiny_exports("unet", Precision.FP32, CUDA_STYLE)
    record_lora_weights(spec.module(), path, tmp_path / "map.json")
    weights = json.loads((tmp_path / "map.json").read_text())["weights"]
    convolutions = [w for w in weights.values() if len(w["shape"]) == 4]
    assert convolutions
    assert all(w["initializer"] and not w["transposed"] for w in convolutions)


def test_plain_backends_keep_plain_graphs():
    from sdtrt.engine.onnxruntime.cpu import OnnxRuntimeBackend

    assert not OnnxRuntimeBackend.graph_style.cuda_fusions
    assert CUDA_STYLE.cuda_fusions and GraphStyle().cuda_fusions is False


def test_weights_set_aside_during_the_search_come_back(tiny_exports, monkeypatch):
    """The pattern search runs with large weights set aside (cuda_fusions.SET_ASIDE_BYTES); the
    fused graph is the same as one searched with every weight in place."""
    from sdtrt.export import cuda_fusions

    *_, plain, _ = tiny_exports("unet", Precision.FP32, PLAIN_CUDA)
    assert sum(len(t.raw_data) >= 4096 for t in plain.graph.initializer) > 10
    whole = cuda_fusions.fuse_for_cuda(onnx.ModelProto.FromString(plain.SerializeToString()))
    monkeypatch.setattr(cuda_fusions, "SET_ASIDE_BYTES", 4096)  # every tiny weight matrix
    aside = cuda_fusions.fuse_for_cuda(onnx.ModelProto.FromString(plain.SerializeToString()))
    assert aside.SerializeToString() == whole.SerializeToString()


def test_tensor_runs_give_the_cuda_kernels_their_weights_as_constants(tiny_exports):
    """`sdtrt debug compare` runs graphs with their weights as inputs and no optimisation; the
    weights NhwcConv and GroupNorm lay out at session start stay constants, NhwcConv's already
    channels-last, as ONNX Runtime's own folding would leave them."""
    from sdtrt.engine.graph_style import fold_weight_layouts, kernel_constants
    from sdtrt.engine.weights.initializers import weights_as_inputs

    spec, _, model, _ = tiny_exports("unet", Precision.FP32, CUDA_STYLE)
    keep = kernel_constants(model.graph)
    light, _ = weights_as_inputs(model, keep)
    fold_weight_layouts(light)
    constants = {t.name: onnx.numpy_helper.to_array(t) for t in light.graph.initializer}
    fused = [n for n in light.graph.node if n.domain == CONTRIB_DOMAIN]
    convolutions = [n for n in fused if n.op_type == "NhwcConv"]
    norms = [n for n in fused if n.op_type in ("GroupNorm", "SkipGroupNorm")]
    assert convolutions and norms
    for node in convolutions:
        assert node.input[1] in constants, node.name
    for node in norms:
        assert node.input[1] in constants and node.input[2] in constants, node.name
    assert not [n for n in light.graph.node if n.op_type == "Transpose" and n.input[0] in constants]
    torch_weight = spec.module().inner.conv_in.weight.detach().numpy()
    [conv_in] = [n for n in convolutions if "conv_in" in n.name]
    np.testing.assert_array_equal(constants[conv_in.input[1]], torch_weight.transpose(0, 2, 3, 1))
    onnx.checker.check_model(light)
