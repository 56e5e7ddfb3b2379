"""The fp16 build guard on a hand-made graph and on the tiny model made to overflow fp16:
plain conversion gives NaN/inf, the guard keeps the overflowing nodes in fp32 and the outputs
come back within tolerance."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from sdtrt.engine.options import BuildOptions
from sdtrt.engine.ranges import resolve_ranges
from sdtrt.errors import BuildError
from sdtrt.export.families import load_family
from sdtrt.export.fp16.guard import _grow, _Search, calibration_feeds, guard_fp16
from sdtrt.export.fp16.policy import to_fp16
from sdtrt.export.onnx_export import export_onnx
from sdtrt.tolerances import FP16_GUARD_RELATIVE


def _run(model: onnx.ModelProto, feed: dict[str, np.ndarray]) -> np.ndarray:
    """The outputs, concatenated, each node computed in its graph type: onnxruntime's CPU
    optimisations drop the fp16 round trips around kernels it lacks in fp16, hiding overflows."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    return np.concatenate([o.ravel() for o in session.run(None, feed)])


def _relative_error(expected: np.ndarray, actual: np.ndarray) -> float:
    return float(np.abs(actual - expected).max() / np.abs(expected).max())


def _overflowing_graph() -> onnx.ModelProto:
    """x @ up (values near 2e5) -> Relu -> * down (back to ~1), plus a branch that stays
    small. fp16 cannot hold the middle, which is a second output. (onnxruntime's CPU kernels,
    lacking fp16 for these ops, compute such a chain in fp32, so only the real networks below
    show plain fp16 failing on this CPU.)"""
    rng = np.random.default_rng(0)
    up = (rng.standard_normal((16, 16)) * 4e4).astype(np.float32)
    down = np.full((16,), 1e-5, dtype=np.float32)
    side = rng.standard_normal((16, 16)).astype(np.float32) / 4
    nodes = [
        helper.make_node("MatMul", ["x", "up"], ["big"], name="up_proj"),
        helper.make_node("Relu", ["big"], ["big_relu"], name="relu"),
        helper.make_node("Mul", ["big_relu", "down"], ["small"], name="down_scale"),
        helper.make_node("MatMul", ["x", "side"], ["branch"], name="side_proj"),
        helper.make_node("Add", ["small", "branch"], ["y"], name="add"),
    ]
    graph = helper.make_graph(
        nodes, "overflowing",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 16])],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["n", 16])
         for name in ("y", "big_relu")],
        [numpy_helper.from_array(a, n) for a, n in ((up, "up"), (down, "down"), (side, "side"))],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_guard_keeps_exactly_the_overflowing_nodes() -> None:
    model = _overflowing_graph()
    rng = np.random.default_rng(1)
    feeds = [{"x": rng.standard_normal((4, 16), dtype=np.float32)} for _ in range(2)]
    expected = _run(model, feeds[0])
    result = guard_fp16(onnx.load_from_string(model.SerializeToString()), feeds,
                        FP16_GUARD_RELATIVE)  # fmt: skip
    # The producer of the big values, the node between, and the reader that brings them back.
    assert {i.node for i in result.islands} == {"up_proj", "relu", "down_scale"}
    assert all("overflow" in i.reason for i in result.islands)
    guarded = _run(result.model, feeds[0])
    assert np.isfinite(guarded).all()
    assert _relative_error(expected, guarded) <= FP16_GUARD_RELATIVE
    # Nodes off the overflowing path are still fp16.
    side = next(n for n in result.model.graph.node if n.name == "side_proj")
    assert any(name.endswith("_as_fp16") for name in side.input)


def test_reference_tensors_wait_on_disk_and_go_with_the_guard(tmp_path, monkeypatch) -> None:
    """SD 1.5's fp32 tensors do not fit in memory three times over: each calibration input's
    are written out, read back memory-mapped, and removed when the guard is done."""
    import tempfile

    from sdtrt.export.fp16.guard import _StoredRun

    run = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b/with:odd names": np.ones(4)}
    stored = _StoredRun(run, tmp_path / "run")
    assert list(stored) == list(run) and len(stored) == 2
    assert isinstance(stored["a"], np.memmap)
    np.testing.assert_array_equal(stored["a"], run["a"])
    np.testing.assert_array_equal(stored["b/with:odd names"], run["b/with:odd names"])

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "scratch"))
    (tmp_path / "scratch").mkdir()
    feeds = [{"x": np.random.default_rng(1).standard_normal((4, 16), dtype=np.float32)}]
    guard_fp16(_overflowing_graph(), feeds, FP16_GUARD_RELATIVE)
    assert list((tmp_path / "scratch").iterdir()) == []


def test_guard_needs_calibration_inputs() -> None:
    with pytest.raises(BuildError, match="calibration"):
        guard_fp16(_overflowing_graph(), [], FP16_GUARD_RELATIVE)


@pytest.fixture(scope="module")
def overflow_onnx(overflow_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """The overflowing tiny model's UNet and VAE decoder exported in fp32, with calibration."""
    folder = tmp_path_factory.mktemp("overflow-onnx")
    loaded = load_family(overflow_model_dir, "overflow")
    info = loaded.info()
    ranges = resolve_ranges(BuildOptions(), info.native_size, info.vae_scale_factor)
    exported = {}
    for spec in loaded.specs(("unet", "vae_decoder")):
        path = folder / f"{spec.name}.onnx"
        inputs = spec.sample_inputs(spec.trace_point(ranges), np.random.default_rng(0))
        export_onnx(spec, inputs, path)
        exported[spec.name] = (path, calibration_feeds(spec, ranges, (999, 500, 20)))
    return exported


@pytest.mark.parametrize(
    ("component", "scaled_node"),
    [
        ("unet", "/inner/down_blocks.1/attentions.0/transformer_blocks.0/attn1/to_v/MatMul"),
        ("vae_decoder", "/decoder/up_blocks.0/resnets.0/conv2/Conv"),
    ],
)
def test_overflowing_model(overflow_onnx, component: str, scaled_node: str) -> None:  # type: ignore[no-untyped-def]
    path, feeds = overflow_onnx[component]
    reference = [_run(onnx.load(str(path)), feed) for feed in feeds]
    assert all(np.isfinite(r).all() for r in reference)  # fp32 holds the big values

    plain = to_fp16(onnx.load(str(path)))
    assert any(not np.isfinite(_run(plain, feed)).all() for feed in feeds)

    result = guard_fp16(onnx.load(str(path)), feeds, FP16_GUARD_RELATIVE)
    assert scaled_node in {i.node for i in result.islands}
    for feed, expected in zip(feeds, reference, strict=True):
        actual = _run(result.model, feed)
        assert np.isfinite(actual).all()
        assert _relative_error(expected, actual) <= FP16_GUARD_RELATIVE


def _cancelling_graph() -> onnx.ModelProto:
    """(x + 1000) - 1000: no overflow, but fp16 steps by 0.5 near 1000, so the result loses x's
    fraction. Keeping the subtraction alone in fp32 cannot help: its input arrives rounded."""
    offset = numpy_helper.from_array(np.array(1000.0, dtype=np.float32), "offset")
    nodes = [
        helper.make_node("Add", ["x", "offset"], ["shifted"], name="add_offset"),
        helper.make_node("Sub", ["shifted", "offset"], ["back"], name="sub_offset"),
        helper.make_node("Relu", ["x"], ["y"], name="relu"),
        helper.make_node("Add", ["back", "y"], ["z"], name="add"),
    ]
    graph = helper.make_graph(
        nodes, "cancelling",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 16])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["n", 16])],
        [offset],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_growth_starts_at_the_first_divergence_then_moves_upstream(tmp_path) -> None:
    """The growth rule on given errors: onnxruntime's CPU provider computes chains of fp16 ops
    it has no fp16 kernels for in fp32, so on this CPU the cancellation does not show."""
    rng = np.random.default_rng(2)
    feeds = [{"x": rng.standard_normal((4, 16), dtype=np.float32)}]
    search = _Search(_cancelling_graph(), feeds, FP16_GUARD_RELATIVE, tmp_path)
    graph = search.model.graph
    errors = {"x": 0.0, "shifted": 1e-4, "back": 0.1, "y": 0.0, "z": 0.05}
    first = _grow(graph, search, {}, errors)
    assert [i.node for i in first] == ["sub_offset"]  # "add" only inherits the error
    assert "error 0.1" in first[0].reason
    upstream = _grow(graph, search, {"sub_offset": first[0]}, errors)
    assert [i.node for i in upstream] == ["add_offset"]
    assert "feeds sub_offset" in upstream[0].reason
