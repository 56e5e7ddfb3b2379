"""fp16 through the graph: what stays fp32, and fp16 graphs validated on the CPU against torch."""

import collections

import onnx
import pytest

from sdtrt.engine.manifest import read_manifest
from sdtrt.engine.options import BuildOptions, Precision
from sdtrt.export.build import ExportOptions, build
from sdtrt.export.fp16.policy import NORM_OPS, embedding_nodes, to_fp16
from sdtrt.export.precision import component_precision
from sdtrt.tolerances import EXPORT_FP16_RELATIVE


def test_vae_decoder_stays_fp32_unless_asked():
    assert component_precision("unet", Precision.FP16) is Precision.FP16
    assert component_precision("vae_decoder", Precision.FP16) is Precision.FP32
    assert component_precision("vae_decoder", Precision.FP16, reduced_vae=True) is Precision.FP16
    assert component_precision("vae_decoder", Precision.FP32, reduced_vae=True) is Precision.FP32
    for reduced in (Precision.BF16, Precision.INT8):
        assert component_precision("unet", reduced) is reduced
        assert component_precision("vae_decoder", reduced) is Precision.FP32
        assert component_precision("vae_decoder", reduced, reduced_vae=True) is reduced


def test_vae_follows_bf16_and_w8a8_by_default():
    for precision, follows in [
        (Precision.FP16, False),
        (Precision.INT8, False),
        (Precision.BF16, True),
        (Precision.W8A8, True),
        (Precision.FP32, False),
    ]:
        assert BuildOptions(precision=precision).reduced_vae is follows, precision
        assert BuildOptions(precision=precision, fp16_vae=True).reduced_vae
        assert not BuildOptions(precision=precision, fp16_vae=False).reduced_vae
    assert BuildOptions(precision=Precision.FP16, fp16_guard=True, fp16_vae=False).reduced_vae


def test_timestep_embedding_is_found(tiny_engine_dir):
    graph = onnx.load(str(tiny_engine_dir / "unet" / "model.onnx")).graph
    found = embedding_nodes(graph)
    ops = {node.op_type for node in graph.node if node.name in found}
    assert {"Sin", "Cos", "Mul"} <= ops
    assert len(found) < 40  # the embedding, not the network


@pytest.fixture(scope="module")
def fp16_engines(tiny_model_dir, tmp_path_factory):
    output = tmp_path_factory.mktemp("fp16") / "engines"
    options = BuildOptions(backend="onnxruntime", precision=Precision.FP16)
    build(str(tiny_model_dir), output, ExportOptions(), options)
    return output


def test_fp16_build_validates_against_torch(fp16_engines):
    components = read_manifest(fp16_engines).components
    assert {name: c.precision for name, c in components.items()} == {
        "text_encoder": Precision.FP16,
        "unet": Precision.FP16,
        "vae_decoder": Precision.FP32,
        "vae_encoder": Precision.FP32,
    }
    for name in ("text_encoder", "unet"):
        for item in components[name].validation:
            assert item.tolerance == EXPORT_FP16_RELATIVE
            # fp16 really ran: more error than fp32 shows, within the fp16 tolerance.
            assert 1e-4 < item.relative_error <= EXPORT_FP16_RELATIVE, (name, item)
    unet = onnx.load(str(fp16_engines / "unet" / "model.onnx"))
    types = {t.data_type for t in unet.graph.initializer}
    assert onnx.TensorProto.FLOAT16 in types
    assert unet.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # fp32 I/O


def test_fp16_engines_generate(fp16_engines):
    from sdtrt.runtime.pipeline import Pipeline

    with Pipeline.load(fp16_engines) as pipe:
        images = pipe("a cat", num_inference_steps=3, seed=1, output_type="np").images
    assert images.shape == (1, 64, 64, 3) and 0 <= images.min() and images.max() <= 1


def _norms_reading_fp32(model):
    """Normalisation nodes that read a Cast to fp32, i.e. compute in an fp32 island."""
    casts_to_fp32 = {
        n.output[0]
        for n in model.graph.node
        if n.op_type == "Cast" and any(a.name == "to" and a.i == onnx.TensorProto.FLOAT
                                       for a in n.attribute)  # fmt: skip
    }
    return [n for n in model.graph.node if n.op_type in NORM_OPS and n.input[0] in casts_to_fp32]


def test_normalisations_follow_the_backends_graph_style(tiny_engine_dir):
    """fp32 islands by default; fp16 for a runtime whose kernels keep statistics in fp32."""
    exported = tiny_engine_dir / "unet" / "model.onnx"  # fp32
    islands = to_fp16(onnx.load(str(exported)))
    plain = to_fp16(onnx.load(str(exported)), fp32_norms=False)
    norms = [n for n in plain.graph.node if n.op_type in NORM_OPS]
    assert norms and len(_norms_reading_fp32(islands)) == len(norms)
    assert _norms_reading_fp32(plain) == []
    ops = [collections.Counter(n.op_type for n in m.graph.node) for m in (islands, plain)]
    assert ops[1]["Cast"] < ops[0]["Cast"]
