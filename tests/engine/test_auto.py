"""`--backend auto`: the pick over every availability case, and what doctor and build make of it."""

from __future__ import annotations

import pytest

from sdtrt.engine import backends
from sdtrt.engine.auto import Availability, pick, probe
from sdtrt.engine.doctor import diagnose
from sdtrt.engine.host import cpu_flags
from sdtrt.engine.options import BuildOptions
from sdtrt.errors import BackendUnavailable, SdtrtError

USABLE = None
MISSING = "not installed"


def _available(tensorrt=MISSING, onnxruntime_cuda=MISSING, openvino=MISSING, onnxruntime=USABLE):
    return Availability(
        tensorrt=tensorrt,
        onnxruntime_cuda=onnxruntime_cuda,
        openvino=openvino,
        onnxruntime=onnxruntime,
    )


@pytest.mark.parametrize(
    ("available", "expected"),
    [
        (_available(tensorrt=USABLE, onnxruntime_cuda=USABLE, openvino=USABLE), "tensorrt"),
        (_available(tensorrt=USABLE), "tensorrt"),
        (_available(onnxruntime_cuda=USABLE, openvino=USABLE), "onnxruntime-cuda"),
        (_available(onnxruntime_cuda=USABLE, onnxruntime=MISSING), "onnxruntime-cuda"),
        (_available(openvino=USABLE), "openvino"),
        (_available(openvino=USABLE, onnxruntime=MISSING), "openvino"),
        (_available(), "onnxruntime"),
    ],
)
def test_fastest_usable_backend_wins(available, expected):
    assert pick(available).backend == expected


def test_the_reason_names_what_was_missing():
    choice = pick(_available(onnxruntime_cuda=USABLE, tensorrt="TensorRT needs an NVIDIA GPU"))
    assert "TensorRT is not (TensorRT needs an NVIDIA GPU)" in choice.reason
    choice = pick(_available(openvino="openvino is not installed"))
    assert choice.backend == "onnxruntime" and "openvino is not installed" in choice.reason


def test_nothing_usable_is_one_line():
    with pytest.raises(SdtrtError, match="no backend can run here") as error:
        pick(_available(openvino="no openvino", onnxruntime="no onnxruntime"))
    assert "\n" not in str(error.value)


def test_probe_turns_backend_errors_into_reasons():
    def unusable() -> str:
        raise BackendUnavailable("TensorRT is not installed")

    found = probe(
        {
            "tensorrt": unusable,
            "onnxruntime-cuda": unusable,
            "openvino": lambda: "2026.4.1",
            "onnxruntime": lambda: "1.32.0",
        }
    )
    assert found == _available(
        tensorrt="TensorRT is not installed",
        onnxruntime_cuda="TensorRT is not installed",
        openvino=USABLE,
    )


def test_auto_is_the_default_and_resolves_to_a_real_backend():
    assert BuildOptions().backend == "auto"
    chosen = backends.choose_backend(BuildOptions())
    assert chosen.name == backends.auto_choice().backend != "auto"


def test_doctor_says_what_auto_picks_here():
    findings = {f.topic: f for f in diagnose()}
    auto = findings["backend auto"]
    assert auto.ok and auto.value.startswith(f"picks {backends.auto_choice().backend}: ")
    assert "bf16 compute:" in findings["CPU"].value
    int8 = bool({"avx512_vnni", "avx_vnni", "amx_int8"} & cpu_flags())
    assert f"int8 dot products: {'yes' if int8 else 'no'}" in findings["CPU"].value
