"""ONNX Runtime on CUDA, the parts decided on the host: provider options, and an engine file
that any provider can load again (saved from a CPU session at the provider-independent level)."""

import collections

import numpy as np
import onnx
import onnxruntime as ort

from sdtrt.engine.manifest import read_manifest
from sdtrt.engine.onnxruntime_cuda import OnnxRuntimeCudaBackend, cuda_provider_options
from sdtrt.engine.options import BuildOptions


def test_fp32_means_fp32_on_cuda():
    options = cuda_provider_options({"providers": ["CUDAExecutionProvider"]})
    assert options["use_tf32"] == "0"
    assert options["cudnn_conv_algo_search"] == "EXHAUSTIVE"
    assert "enable_cuda_graph" not in options


def test_cuda_graphs_only_for_static_engines():
    assert cuda_provider_options({"cuda_graph": True})["enable_cuda_graph"] == "1"
    assert "enable_cuda_graph" not in cuda_provider_options({"cuda_graph": False})


def test_saved_cuda_engine_is_provider_independent(tiny_engine_dir, tmp_path):
    """No node in the saved graph is fused for one provider, and the CPU can run it as the
    export does: what onnxruntime issue 11348 breaks when a CUDA session saves its graph."""
    manifest = read_manifest(tiny_engine_dir)
    record = manifest.components["unet"]
    exported = tiny_engine_dir / record.onnx
    backend = OnnxRuntimeCudaBackend()
    name, settings = backend.build(exported, tmp_path, record.io, BuildOptions(), tmp_path)
    assert settings["providers"] == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert settings["cuda_graph"] is False and "nchwc_block" not in settings
    assert backend.target() == {}
    saved = onnx.load(str(tmp_path / name))
    domains = collections.Counter(node.domain for node in saved.graph.node)
    assert set(domains) <= {"", "ai.onnx"}, domains  # no provider-specific fused nodes
    feeds = {
        "sample": np.random.default_rng(0).standard_normal((2, 4, 32, 32), dtype=np.float32),
        "timestep": np.array([10.0, 10.0], np.float32),
        "encoder_hidden_states": np.zeros((2, 77, 32), np.float32),
    }
    cpu = ["CPUExecutionProvider"]
    expected = ort.InferenceSession(str(exported), providers=cpu).run(None, feeds)[0]
    got = ort.InferenceSession(str(tmp_path / name), providers=cpu).run(None, feeds)[0]
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)
