import pytest

from sdtrt.engine.host import cpu_flags
from sdtrt.engine.onnxruntime import cpu as onnxruntime_backend
from sdtrt.engine.onnxruntime.cpu import nchwc_block, use_laid_out_graph
from sdtrt.engine.onnxruntime.library import CPU, CUDA, check_providers, require_started
from sdtrt.errors import BackendUnavailable, EngineIncompatible


def test_an_engine_for_missing_providers_asks_for_a_rebuild(tmp_path):
    check_providers([CPU], [CUDA, CPU], tmp_path)
    with pytest.raises(EngineIncompatible, match="was built for CUDAExecutionProvider, which this"):
        check_providers([CUDA, CPU], [CPU], tmp_path / "engine.onnx")


def test_a_provider_that_failed_to_start_is_an_error_not_a_cpu_run():
    require_started([CUDA, CPU], [CUDA, CPU])
    with pytest.raises(BackendUnavailable, match="could not start CUDAExecutionProvider"):
        require_started([CUDA, CPU], [CPU])  # what ONNX Runtime does when libcudnn is missing


def test_big_graphs_keep_their_weights_beside_the_saved_graph(
    tiny_engine_dir, tmp_path, monkeypatch
):
    """An fp16 graph the CPU optimiser widens to fp32 can pass protobuf's 2 GB limit, so from
    EXTERNAL_WEIGHTS_FROM on the weights go to a file beside it (shown here with a tiny limit)."""
    import numpy as np

    from sdtrt.engine.manifest import read_manifest
    from sdtrt.engine.options import BuildOptions, Precision

    record = read_manifest(tiny_engine_dir).components["vae_decoder"]
    monkeypatch.setattr(onnxruntime_backend, "EXTERNAL_WEIGHTS_FROM", 1024)
    backend = onnxruntime_backend.OnnxRuntimeBackend()
    source = tiny_engine_dir / record.onnx
    name, settings = backend.build(
        source, tmp_path, record.io, BuildOptions(precision=Precision.FP32), tmp_path
    )
    assert (tmp_path / (name + ".data")).stat().st_size > (tmp_path / name).stat().st_size
    with backend.load("vae_decoder", tmp_path / name, source, record.io, settings) as engine:
        image = engine.infer({"latent": np.zeros((1, 4, 32, 32), np.float32)})["image"]
    assert image.shape == (1, 3, 64, 64)


def test_nchwc_block_follows_the_vector_width():
    assert nchwc_block({"avx512f", "avx2", "fma"}) == 16
    assert nchwc_block({"avx2", "fma", "sse4_2"}) == 8
    assert nchwc_block({"sse4_2", "neon"}) == 0
    assert nchwc_block(set()) is None


def test_laid_out_graphs_only_on_the_cpu_they_suit():
    assert use_laid_out_graph({"providers": [CPU]}, None)  # portable save
    assert use_laid_out_graph({"nchwc_block": 8}, 8)
    assert not use_laid_out_graph({"nchwc_block": 8}, 16)
    assert not use_laid_out_graph({"nchwc_block": 8}, None)


def test_a_build_on_this_machine_loads_its_own_layout(tiny_engine_dir):
    from sdtrt.engine.manifest import read_manifest

    settings = read_manifest(tiny_engine_dir).components["unet"].settings
    assert use_laid_out_graph(settings, nchwc_block(cpu_flags()))


def test_another_cpus_layout_falls_back_to_the_portable_graph(engine_copy, caplog):
    import json

    import numpy as np

    from sdtrt.engine.backends import load_component
    from sdtrt.engine.manifest import read_manifest

    path = engine_copy / "manifest.json"
    data = json.loads(path.read_text())
    data["components"]["vae_decoder"]["settings"]["nchwc_block"] = 64
    path.write_text(json.dumps(data))
    record = read_manifest(engine_copy).components["vae_decoder"]
    (engine_copy / record.engine).write_bytes(b"x" * (engine_copy / record.engine).stat().st_size)
    with load_component(engine_copy, record) as engine:  # would fail on the damaged engine file
        image = engine.infer({"latent": np.zeros((1, 4, 32, 32), np.float32)})["image"]
    assert image.shape == (1, 3, 64, 64)
    assert "laid out for another CPU" in caplog.text
