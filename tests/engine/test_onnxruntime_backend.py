import pytest

from sdtrt.engine.onnxruntime_backend import CPU, CUDA, check_providers, choose_providers
from sdtrt.errors import EngineIncompatible


def test_cuda_is_chosen_where_onnxruntime_has_it():
    assert choose_providers([CPU]) == [CPU]
    assert choose_providers(["TensorrtExecutionProvider", CUDA, CPU]) == [CUDA, CPU]


def test_an_engine_for_missing_providers_asks_for_a_rebuild(tmp_path):
    check_providers([CPU], [CUDA, CPU], tmp_path)
    with pytest.raises(EngineIncompatible, match="was built for CUDAExecutionProvider, which this"):
        check_providers([CUDA, CPU], [CPU], tmp_path / "engine.onnx")
