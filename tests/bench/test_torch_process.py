"""The torch references' own process: timings measured there, failures as one line here."""

import numpy as np
import pytest

from sdtrt.bench import torch_process
from sdtrt.bench.references import torch_target
from sdtrt.bench.torch_process import TorchProcess
from sdtrt.engine.options import Precision
from sdtrt.errors import InputError

CPU = torch_target("onnxruntime", Precision.FP32)


def _tiny_unet_feeds() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "sample": rng.standard_normal((2, 4, 8, 8), dtype=np.float32),
        "timestep": np.full((2,), 500.0, np.float32),
        "encoder_hidden_states": rng.standard_normal((2, 77, 32), dtype=np.float32),
    }


def test_the_child_times_the_calls_and_ends_with_its_input(tiny_model_dir):
    with TorchProcess(str(tiny_model_dir), "euler", CPU) as process:
        unet = process.unet(_tiny_unet_feeds())
        seconds = [unet() for _ in range(2)]
        child = process._child
    assert all(0 < s < 60 for s in seconds)
    assert child.returncode == 0  # closed by its input, not killed


def test_a_folder_diffusers_cannot_load_is_one_line(tmp_path):
    (tmp_path / "model_index.json").write_text("{}")
    with pytest.raises(InputError, match=f"diffusers could not load {tmp_path} for --compare"):
        TorchProcess(str(tmp_path), "euler", CPU)


def test_a_child_that_died_is_one_line(tiny_model_dir):
    with TorchProcess(str(tiny_model_dir), "euler", CPU) as process:
        unet = process.unet(_tiny_unet_feeds())
        process._child.kill()
        with pytest.raises(InputError, match=r"the torch reference process ended \(exit -9\)"):
            unet()


def test_compare_without_torch_says_what_to_install(monkeypatch, tiny_model_dir):
    real = torch_process.importlib.util.find_spec
    monkeypatch.setattr(
        torch_process.importlib.util,
        "find_spec",
        lambda name, *a: None if name == "diffusers" else real(name, *a),
    )
    with pytest.raises(InputError, match=r"diffusers is not installed here: pip install"):
        TorchProcess(str(tiny_model_dir), "euler", CPU)
