"""Networks exported without their fp32 weights in memory (export/lean.py): SD 3's T5 loaded in
16 bits, still checked against and traced as the fp32 network."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper
from transformers import T5EncoderModel

from sdtrt.engine.host import cpu_flags
from sdtrt.engine.manifest import read_manifest
from sdtrt.engine.openvino.cpu import precision_problem
from sdtrt.engine.options import BuildOptions, Precision
from sdtrt.export.build import ExportOptions, build
from sdtrt.export.families import load_family
from sdtrt.export.families.diffusers_folder import load_part
from sdtrt.export.lean import stored_dtype
from sdtrt.export.onnx_export import export_graph
from sdtrt.export.specs import T5EncoderSpec
from sdtrt.export.validate import torch_reference


@pytest.fixture(scope="module")
def tiny_sd3(preset_build):
    folder, _ = preset_build("tiny-sd3")
    return folder


def _t5(folder, dtype):
    return load_part(folder, T5EncoderModel, "text_encoder_3", dtype)


def _ids(rows=2, tokens=77):
    return {"input_ids": np.random.default_rng(0).integers(0, 100, (rows, tokens), np.int32)}


def test_sixteen_bit_t5_gives_the_fp32_networks_outputs(tiny_sd3):
    dtype = stored_dtype(tiny_sd3 / "text_encoder_3")
    assert dtype in (torch.float16, torch.bfloat16)
    half = _t5(tiny_sd3, dtype)
    full = _t5(tiny_sd3, dtype).float()  # the fp32 network over the same weights
    feeds = _ids()
    expected = torch_reference(T5EncoderSpec(full), feeds)["last_hidden_state"]
    got = torch_reference(T5EncoderSpec(half), feeds)["last_hidden_state"]
    np.testing.assert_array_equal(got, expected)
    assert {p.dtype for p in half.parameters()} == {dtype}  # back in 16 bits after the run
    with torch.no_grad():  # computed in 16 bits instead, it would not be the same
        sixteen = half(torch.from_numpy(feeds["input_ids"]).long())[0].float().numpy()
    assert np.abs(sixteen - expected).max() > 1e-4


def test_the_16_bit_module_exports_the_fp32_modules_graph(tiny_sd3, tmp_path):
    dtype = stored_dtype(tiny_sd3 / "text_encoder_3")
    feeds = _ids()
    graphs = {}
    for name, module in (("half", _t5(tiny_sd3, dtype)), ("full", _t5(tiny_sd3, dtype).float())):
        path = tmp_path / f"{name}.onnx"
        export_graph(T5EncoderSpec(module), feeds, path, fp16_weights=True)
        graphs[name] = onnx.load(str(path))
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        graphs[name + "-out"] = session.run(None, feeds)[0]
    half, full = graphs["half"], graphs["full"]
    assert [n.op_type for n in half.graph.node] == [n.op_type for n in full.graph.node]
    weights = {t.name: numpy_helper.to_array(t) for t in full.graph.initializer}
    assert {t.name for t in half.graph.initializer} == set(weights)
    for tensor in half.graph.initializer:
        np.testing.assert_array_equal(numpy_helper.to_array(tensor), weights[tensor.name])
    reference = torch_reference(T5EncoderSpec(_t5(tiny_sd3, dtype)), feeds)["last_hidden_state"]
    np.testing.assert_allclose(graphs["half-out"], reference, atol=1e-5)
    np.testing.assert_array_equal(graphs["half-out"], graphs["full-out"])


def test_a_16_bit_build_loads_t5_last_and_in_16_bits(tiny_sd3):
    eager = load_family(tiny_sd3, "tiny-sd3")
    assert eager.text_encoder_3 is not None and eager.default_components[2] == "text_encoder_3"
    lean = load_family(tiny_sd3, "tiny-sd3", sixteen_bit=True)
    assert lean.text_encoder_3 is None and lean.deferred_sizes()["text_encoder_3"] > 0
    assert lean.default_components[-1] == "text_encoder_3"
    (spec,) = lean.specs(("text_encoder_3",))
    assert {p.dtype for p in spec.module().parameters()} == {
        stored_dtype(tiny_sd3 / "text_encoder_3")
    }


@pytest.mark.skipif(
    precision_problem(Precision.BF16, cpu_flags()) is not None,
    reason="this CPU has no bfloat16 instructions",
)
def test_a_bf16_build_with_t5_in_16_bits(tiny_sd3, tmp_path):
    pytest.importorskip("openvino")
    asked = ("text_encoder_3", "text_encoder")  # built in the family's order all the same
    options = BuildOptions(backend="openvino", precision=Precision.BF16)
    build(str(tiny_sd3), tmp_path / "e", ExportOptions(components=asked), options)
    manifest = read_manifest(tmp_path / "e")
    assert list(manifest.components) == ["text_encoder", "text_encoder_3"]
    t5 = manifest.components["text_encoder_3"]
    assert t5.settings["weights"] == "fp16" and t5.validation[0].relative_error < 0.05


def test_a_16_bit_load_that_cannot_fit_is_refused_in_one_line(tiny_sd3):
    from sdtrt.errors import BuildError
    from sdtrt.export.memory import check_load_memory, fp32_bytes_on_disk

    folder = tiny_sd3 / "text_encoder_3"
    half = fp32_bytes_on_disk(folder) // 2
    with pytest.raises(BuildError, match=r"networks in 16 bits needs about 2 GiB") as caught:
        check_load_memory(tiny_sd3, ("text_encoder_3",), "x", total=half, bytes_per_weight=2)
    assert "\n" not in str(caught.value)
