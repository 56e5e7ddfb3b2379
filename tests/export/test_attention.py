"""Attention exported as ONNX Runtime's MultiHeadAttention node (export/attention.py): one node
per diffusers attention layer, the same outputs as torch, and the module left as it was."""

import collections

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from diffusers.models.attention_processor import Attention

from sdtrt.engine.graph_style import GraphStyle
from sdtrt.engine.options import BuildOptions, Precision
from sdtrt.engine.ranges import resolve_ranges
from sdtrt.export.attention import FusedAttnProcessor, fused_attention
from sdtrt.export.families import load_family
from sdtrt.export.onnx_export import export_onnx
from sdtrt.export.validate import compare, torch_reference
from sdtrt.tolerances import EXPORT_TOLERANCE

NETWORKS = ("unet", "vae_decoder", "vae_encoder")
FUSED = GraphStyle(fused_attention=True)


@pytest.fixture(scope="module")
def tiny_family(tiny_model_dir):
    return load_family(tiny_model_dir, "tiny")


@pytest.fixture(scope="module")
def tiny_specs(tiny_family):
    return {s.name: s for s in tiny_family.specs(NETWORKS)}


@pytest.mark.parametrize("precision", [Precision.FP32, Precision.FP16])
@pytest.mark.parametrize("network", NETWORKS)
def test_each_attention_layer_is_one_node_with_torch_outputs(
    tiny_family, tiny_specs, network, precision, tmp_path
):
    spec = tiny_specs[network]
    ranges = resolve_ranges(
        BuildOptions(), tiny_family.info().native_size, tiny_family.vae_scale_factor
    )
    inputs = spec.sample_inputs(spec.opt_point(ranges), np.random.default_rng(0))
    plain, fused = tmp_path / "plain.onnx", tmp_path / "fused.onnx"
    export_onnx(spec, inputs, plain, precision=precision)
    export_onnx(spec, inputs, fused, precision=precision, style=FUSED)

    def ops(path):
        return collections.Counter(n.op_type for n in onnx.load(str(path)).graph.node)

    attentions = ops(plain)["Softmax"]  # one per attention layer in the plain graph
    assert attentions > 0 and ops(fused)["MultiHeadAttention"] == attentions
    assert ops(fused)["Softmax"] == 0
    session = ort.InferenceSession(str(fused), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    got = dict(zip(names, session.run(None, inputs), strict=True))
    for item in compare(torch_reference(spec, inputs), got, 1.0):
        assert item.relative_error <= EXPORT_TOLERANCE[precision], item


def test_processors_are_put_back(tiny_specs):
    module = tiny_specs["unet"].module()
    layers = [m for m in module.modules() if isinstance(m, Attention)]
    before = [layer.processor for layer in layers]
    with fused_attention(module) as switched:
        assert switched == len(layers)
        assert all(isinstance(layer.processor, FusedAttnProcessor) for layer in layers)
    assert [layer.processor for layer in layers] == before


def _layer(**kwargs):
    torch.manual_seed(0)
    return Attention(query_dim=16, heads=2, dim_head=8, **kwargs).eval()


@pytest.mark.parametrize(
    "kwargs, call",
    [
        ({}, {}),
        ({"cross_attention_dim": 12}, {"encoder_hidden_states": torch.randn(2, 5, 12)}),
        ({"qk_norm": "layer_norm"}, {}),  # not plain: the processor it replaced runs
        ({}, {"attention_mask": torch.zeros(2, 1, 7)}),  # masked: likewise
    ],
)
def test_fused_processor_computes_what_diffusers_does(kwargs, call):
    layer = _layer(**kwargs)
    hidden = torch.randn(2, 7, 16)
    with torch.no_grad():
        expected = layer(hidden, **call)
        layer.set_processor(FusedAttnProcessor(layer.processor))
        got = layer(hidden, **call)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
