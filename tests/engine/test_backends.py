"""Backends that cannot run here say what to install, before any work."""

import pytest
from typer.testing import CliRunner

from sdtrt.cli import app
from sdtrt.engine.backends import BACKENDS, get_backend
from sdtrt.engine.cuda import probe
from sdtrt.errors import BackendUnavailable, InputError

_gpu = probe()
needs_no_gpu = pytest.mark.skipif(
    _gpu.count > 0 or _gpu.problem is not None, reason="this machine has a GPU"
)


def test_known_backends():
    assert set(BACKENDS) == {
        "onnxruntime", "onnxruntime-cuda", "tensorrt", "openvino", "openvino-gpu", "openvino-npu"
    }  # fmt: skip
    with pytest.raises(InputError, match="unknown backend 'tflite'"):
        get_backend("tflite")


@needs_no_gpu
def test_gpu_backends_say_what_is_missing():
    with pytest.raises(BackendUnavailable, match=r"sdtrt\[tensorrt\]|NVIDIA GPU"):
        get_backend("tensorrt").version()
    with pytest.raises(BackendUnavailable, match=r"replace onnxruntime with onnxruntime-gpu"):
        get_backend("onnxruntime-cuda").version()


@needs_no_gpu
def test_build_with_a_missing_backend_writes_nothing(tmp_path):
    result = CliRunner().invoke(
        app, ["build", "tiny", "--backend", "tensorrt", "-o", str(tmp_path / "e")]
    )
    assert result.exit_code == 1
    assert result.stderr.startswith("error: ") and len(result.stderr.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_doctor_lists_every_backend():
    result = CliRunner().invoke(app, ["doctor"])
    assert result.exit_code == 0
    text = " ".join(result.stdout.split())
    for name in BACKENDS:
        assert f"backend {name}" in text
    assert "onnxruntime" in text and "usable" in text


def test_doctor_flags_both_onnxruntime_packages(monkeypatch):
    from sdtrt.engine import doctor

    monkeypatch.setattr(doctor, "installed_version", lambda name: "1.31.1")
    found = {f.topic: f for f in doctor.diagnose()}
    assert not found["onnxruntime packages"].ok
    assert "pip uninstall -y onnxruntime onnxruntime-gpu" in found["onnxruntime packages"].value
