"""`sdtrt debug compare`: a healthy engine directory matches its fp32 reference; one corrupted
initializer is found, by name of the first tensor it makes diverge."""

from __future__ import annotations

from pathlib import Path

import onnx
from onnx import numpy_helper
from typer.testing import CliRunner

from sdtrt.cli import app
from sdtrt.debug.compare import compare
from sdtrt.engine.manifest import read_manifest

runner = CliRunner()


def _weight_readers(graph: onnx.GraphProto) -> dict[str, str]:
    """Initializer name -> the output of the first node that reads it."""
    readers: dict[str, str] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, node.output[0])
    return readers


def test_healthy_engines_match(tiny_engine_dir: Path) -> None:
    results = compare(tiny_engine_dir, "a red car")
    assert {r.component for r in results} == set(read_manifest(tiny_engine_dir).components)
    for result in results:
        assert result.skipped is None
        assert not result.diverges and not result.first_diverging, result


def test_planted_divergence_is_found(engine_copy: Path) -> None:
    record = read_manifest(engine_copy).components["unet"]
    engine_path = engine_copy / record.engine
    model = onnx.load(str(engine_path))
    readers = _weight_readers(model.graph)
    # The middle block's attention value weights, flipped and scaled: the same bytes count, so
    # every file keeps its recorded size, as after a bad disk or a bad copy.
    target = next(
        t for t in model.graph.initializer
        if readers.get(t.name, "").endswith("mid_block/attentions.0/transformer_blocks.0/attn1"
                                            "/to_v/MatMul_output_0")
    )  # fmt: skip
    target.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(target) * -3, target.name))
    size = engine_path.stat().st_size
    onnx.save(model, str(engine_path))
    assert engine_path.stat().st_size == size

    unet = next(r for r in compare(engine_copy, "a red car") if r.component == "unet")
    assert unet.diverges
    assert unet.first_diverging[0].tensor == readers[target.name]

    shown = runner.invoke(app, ["debug", "compare", str(engine_copy)], catch_exceptions=False)
    assert shown.exit_code == 2
    assert "unet (fp32) DIVERGES" in shown.stdout
    assert f"first diverging tensor {readers[target.name]}" in shown.stdout
    assert "text_encoder (fp32) matches" in shown.stdout
