"""ONNX Runtime on CUDA, the parts decided on the host: provider options, and how the engine is
saved."""

import collections

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from sdtrt.engine.onnxruntime.cuda import OnnxRuntimeCudaBackend
from sdtrt.engine.onnxruntime.library import CPU, CUDA, cuda_provider_options
from sdtrt.engine.options import BuildOptions, Precision
from sdtrt.engine.ranges import resolve_ranges
from sdtrt.export.families import load_family
from sdtrt.export.onnx_export import export_onnx


def test_fp32_means_fp32_on_cuda():
    options = cuda_provider_options({"providers": ["CUDAExecutionProvider"]})
    assert options["use_tf32"] == "0"
    assert options["cudnn_conv_algo_search"] == "EXHAUSTIVE"
    assert "enable_cuda_graph" not in options


def test_cuda_graphs_only_for_static_engines():
    assert cuda_provider_options({"cuda_graph": True})["enable_cuda_graph"] == "1"
    assert "enable_cuda_graph" not in cuda_provider_options({"cuda_graph": False})


def _fp16_export(folder, tiny_model_dir):
    spec = load_family(tiny_model_dir, "tiny").specs(("unet",))[0]
    ranges = resolve_ranges(BuildOptions(), (64, 64), 8)
    inputs = spec.sample_inputs(spec.opt_point(ranges), np.random.default_rng(0))
    export_onnx(spec, inputs, folder / "model.onnx", precision=Precision.FP16)
    return folder / "model.onnx", spec.io(ranges)


def test_the_engine_is_saved_by_a_cuda_session_at_the_basic_level(
    tmp_path, tiny_model_dir, monkeypatch
):
    """Never by a CPU session (see the next test), and never above the basic level."""
    export, io = _fp16_export(tmp_path, tiny_model_dir)
    made = []

    class Session:  # records what the build asks of ONNX Runtime; no GPU here
        def __init__(self, path, options, providers):
            made.append((path, options, providers))

        def get_providers(self):
            return [CUDA, CPU]

    monkeypatch.setattr(ort, "InferenceSession", Session)
    backend = OnnxRuntimeCudaBackend()
    name, settings = backend.build(
        export, tmp_path, io, BuildOptions(precision=Precision.FP32), tmp_path
    )
    [(path, options, providers)] = made
    assert path == str(export) and options.optimized_model_filepath == str(tmp_path / name)
    assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    assert providers == [(CUDA, cuda_provider_options({})), CPU]
    assert settings == {
        "providers": [CUDA, CPU],
        "graph_optimization_level": "ORT_ENABLE_ALL",
        "cuda_graph": False,
    }
    assert backend.target() == {}


def test_a_cpu_session_would_save_fp16_nodes_as_fp32(tmp_path, tiny_model_dir):
    """Why the CUDA build never saves from a CPU session: the saved graph gains Casts to fp32
    around every node the CPU has no fp16 kernel for, which the GPU would then run in fp32."""
    export, _ = _fp16_export(tmp_path, tiny_model_dir)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = str(tmp_path / "cpu-saved.onnx")
    ort.InferenceSession(str(export), options, providers=[CPU])

    def casts(path):
        return collections.Counter(n.op_type for n in onnx.load(str(path)).graph.node)["Cast"]

    assert casts(tmp_path / "cpu-saved.onnx") > casts(export)


def test_cudnn_fallback_errors_are_quiet_only_while_engines_run(monkeypatch):
    """Raised to fatal at the first run that starts, back to ONNX Runtime's default only when
    the last concurrent run ends."""
    from sdtrt.engine.onnxruntime.library import QuietDefaultLogger

    levels = []
    monkeypatch.setattr(ort, "set_default_logger_severity", levels.append)
    quiet = QuietDefaultLogger(QuietDefaultLogger.FATAL)
    with quiet:
        with quiet:  # a second engine running meanwhile
            assert levels == [4]
        assert levels == [4]
    assert levels == [4, 2]
    with pytest.raises(RuntimeError), quiet:
        raise RuntimeError("a failed run")
    assert levels == [4, 2, 4, 2]


def test_only_a_shapes_first_run_is_quiet(monkeypatch):
    """cuDNN's algorithm search, and its messages, happen at the first run of each input shape;
    later runs, and whatever they log, keep ONNX Runtime's usual level."""
    import numpy as np

    from sdtrt.engine.onnxruntime.cuda import OrtCudaEngine

    levels = []
    monkeypatch.setattr(ort, "set_default_logger_severity", levels.append)
    engine = OrtCudaEngine.__new__(OrtCudaEngine)  # no GPU here: only the run bookkeeping
    engine._graphed, engine._searched = False, set()
    engine._run_bound = lambda feeds: {"y": feeds["x"]}
    small, large = np.zeros((1, 4)), np.zeros((2, 4))
    engine._run({"x": small})
    assert levels == [4, 2]
    engine._run({"x": small})
    assert levels == [4, 2]
    engine._run({"x": large})
    assert levels == [4, 2, 4, 2]


def test_lora_switching_opens_a_cuda_session_on_the_export(tiny_engine_dir, monkeypatch):
    """The switched engine is a CUDA engine on the portable export, with the new weights and
    the record's settings (the GPU test runs it; here, what the host decides)."""
    from sdtrt.engine.manifest import read_manifest
    from sdtrt.engine.onnxruntime import cuda as onnxruntime_cuda
    from sdtrt.engine.weights import switch as lora_switch

    made = {}

    class Recorded:
        def __init__(self, name, path, io, settings, *, initializers=None):
            made.update(name=name, path=path, settings=settings, initializers=initializers)

    monkeypatch.setattr(onnxruntime_cuda, "OrtCudaEngine", Recorded)
    record = read_manifest(tiny_engine_dir).components["unet"]
    cuda_record = record.model_copy(
        update={"backend": "onnxruntime-cuda", "settings": {"providers": [CUDA, CPU]}}
    )
    weights = {"w": np.ones((2, 2), np.float32)}
    lora_switch.load_with_initializers(tiny_engine_dir, cuda_record, weights)
    assert made["path"] == tiny_engine_dir / record.onnx
    assert made["initializers"] is weights and made["settings"] == {"providers": [CUDA, CPU]}


@pytest.mark.parametrize("graphed", [True, False])
def test_graph_recording_sessions_start_without_their_shape_notice(monkeypatch, graphed):
    """A session that records CUDA graphs starts with ONNX Runtime's default logger at errors
    (its warning about shape computations on the CPU is expected); others at the usual level."""
    from sdtrt.engine.onnxruntime import cuda as onnxruntime_cuda
    from sdtrt.engine.onnxruntime.cpu import OrtEngine

    levels = []
    monkeypatch.setattr(ort, "set_default_logger_severity", levels.append)
    monkeypatch.setattr(onnxruntime_cuda, "load_cuda_libraries", lambda: None)
    monkeypatch.setattr(OrtEngine, "__init__", lambda self, *args, **kwargs: levels.append("made"))
    onnxruntime_cuda.OrtCudaEngine("unet", None, None, {"cuda_graph": graphed})
    assert levels == ([3, "made", 2] if graphed else ["made"])
