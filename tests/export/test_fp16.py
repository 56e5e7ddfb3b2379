"""The fp16 pass on small hand-made graphs and on every exported network: valid single-assignment
graphs, one cast per tensor and type, fp32 where it must be, and no onnxruntime involved."""

import collections
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from sdtrt.errors import BuildError
from sdtrt.export.fp16.convert import FLOAT, FLOAT16, convert, name_nodes, tensor_types
from sdtrt.export.fp16.policy import to_fp16
from sdtrt.tolerances import EXPORT_FP16_RELATIVE

COMPONENTS = ("text_encoder", "unet", "vae_decoder", "vae_encoder")


def _model(nodes, inputs, outputs, initializers=()):
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _run(model, feeds):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def _float_input(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def _small_network():
    """x @ w -> LayerNorm (kept fp32) -> Relu, twice read -> Add; Resize by constant scales;
    a shape computed in float (Shape -> Cast -> Div -> Cast) must stay exact."""
    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.standard_normal((8, 8)).astype(np.float32), "w")
    scale = numpy_helper.from_array(np.ones(8, np.float32), "ln_scale")
    scales = numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")
    big = numpy_helper.from_array(np.array([1e6], np.float32), "big")
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["mm"], name="mm"),
        helper.make_node("LayerNormalization", ["mm", "ln_scale"], ["ln"], name="ln", axis=-1),
        helper.make_node("Relu", ["ln"], ["relu"], name="relu"),
        helper.make_node("Add", ["relu", "mm"], ["sum"], name="sum"),
        helper.make_node("Min", ["sum", "big"], ["clipped"], name="clip"),
        helper.make_node("Unsqueeze", ["clipped", "axes"], ["four_d"], name="unsq"),
        helper.make_node("Resize", ["four_d", "", "scales"], ["y"], name="resize", mode="nearest"),
        helper.make_node("Shape", ["x"], ["shape"], name="shape"),
        helper.make_node("Cast", ["shape"], ["shape_f"], name="shape_f", to=FLOAT),
        helper.make_node("Div", ["shape_f", "three"], ["third"], name="third"),
        helper.make_node("Cast", ["third"], ["n"], name="n", to=TensorProto.INT64),
    ]
    axes = numpy_helper.from_array(np.array([0, 1], np.int64), "axes")
    three = numpy_helper.from_array(np.array([3.0], np.float32), "three")
    return _model(
        nodes,
        [_float_input("x", [4, 8])],
        [
            _float_input("y", ["a", "b", "c", "d"]),
            helper.make_tensor_value_info("n", TensorProto.INT64, [2]),
        ],
        [weight, scale, scales, big, axes, three],
    )


def test_small_network_converts_to_a_valid_graph_close_to_fp32():
    model = _small_network()
    x = np.random.default_rng(1).standard_normal((4, 8)).astype(np.float32) * 3
    expected = _run(model, {"x": x})
    converted = convert(_small_network(), ["LayerNormalization"], [])
    onnx.checker.check_model(onnx.shape_inference.infer_shapes(converted, strict_mode=True))
    got = _run(converted, {"x": x})
    error = np.max(np.abs(got[0] - expected[0])) / np.max(np.abs(expected[0]))
    assert 0 < error <= EXPORT_FP16_RELATIVE
    assert got[1].tolist() == expected[1].tolist()  # shape arithmetic is exact

    types = tensor_types(converted)
    nodes = {n.name: n for n in converted.graph.node}
    assert types["mm"] == FLOAT16 and types["relu"] == FLOAT16 and types["ln"] == FLOAT
    assert types["w"] == FLOAT16  # only fp16 readers
    assert types["ln_scale"] == FLOAT  # only fp32 readers
    assert types["third"] == FLOAT  # shape arithmetic stays fp32
    assert types[nodes["resize"].input[2]] == FLOAT  # Resize's scales are fp32 by definition
    assert {o.name: o.type.tensor_type.elem_type for o in converted.graph.output}["y"] == FLOAT
    assert types["big"] == FLOAT16 and numpy_helper.to_array(
        next(t for t in converted.graph.initializer if t.name == "big")
    )[0] == np.float16(65504)  # clamped to fp16's range, not inf


def test_one_cast_per_tensor_and_type_shared_by_readers():
    model = _small_network()
    converted = convert(model, ["LayerNormalization"], [])
    casts = collections.Counter(
        (n.input[0], n.attribute[0].i) for n in converted.graph.node if n.op_type == "Cast"
    )
    assert all(count == 1 for count in casts.values()), casts
    produced = [o for n in converted.graph.node for o in n.output]
    assert len(produced) == len(set(produced))  # single static assignment


def test_unnamed_nodes_are_refused_until_named():
    model = _small_network()
    model.graph.node[0].name = ""
    with pytest.raises(BuildError, match="unique node names"):
        convert(model, [], [])
    name_nodes(model.graph)
    convert(model, [], [])


def test_kept_nodes_stay_fp32():
    converted = convert(_small_network(), [], ["relu"])
    types = tensor_types(converted)
    assert types["relu"] == FLOAT and types["ln"] == FLOAT16


@pytest.mark.parametrize("component", COMPONENTS)
def test_every_exported_network_converts(tiny_engine_dir, component):
    model = onnx.load(str(tiny_engine_dir / component / "model.onnx"))
    converted = to_fp16(model)
    checked = onnx.shape_inference.infer_shapes(converted, strict_mode=True)
    onnx.checker.check_model(checked, full_check=True)
    io_types = [t.type.tensor_type.elem_type for t in (*checked.graph.input, *checked.graph.output)]
    assert FLOAT16 not in io_types
    assert any(t.data_type == FLOAT16 for t in checked.graph.initializer)


def test_conversion_needs_no_onnxruntime(tiny_engine_dir):
    """The pass must not depend on the onnxruntime that happens to be installed."""
    script = (
        "import sys; sys.modules['onnxruntime'] = None\n"
        "import onnx\n"
        "from sdtrt.export.fp16.policy import to_fp16\n"
        f"m = to_fp16(onnx.load({str(tiny_engine_dir / 'unet' / 'model.onnx')!r}))\n"
        "print(sum(n.op_type == 'Cast' for n in m.graph.node))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert int(result.stdout) > 0
    assert "Attributes:" not in result.stdout + result.stderr
