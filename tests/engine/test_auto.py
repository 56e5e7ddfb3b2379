"""`--backend auto`: the pick over every availability case, and what doctor and build make of it."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import pytest

from sdtrt.engine import backends
from sdtrt.engine.auto import Availability, pick, pick_precision, probe
from sdtrt.engine.base import DeviceKind
from sdtrt.engine.doctor import diagnose
from sdtrt.engine.host import cpu_flags
from sdtrt.engine.options import BuildOptions, Precision
from sdtrt.errors import BackendUnavailable, InputError, SdtrtError

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
    chosen = backends.resolve_build(BuildOptions()).backend
    assert chosen.name == backends.auto_choice().backend != "auto"


@dataclass
class FakeBackend:
    name: str
    precisions: frozenset[Precision]
    problem: str | None = None  # why it cannot run here
    refuses: Precision | None = None  # a precision this machine cannot compute in

    def version(self) -> str:
        if self.problem:
            raise BackendUnavailable(self.problem)
        return "1.0"

    def check_build(self, options: BuildOptions) -> None:
        if options.precision == self.refuses:
            raise InputError(f"this CPU cannot compute in {self.refuses.value}")


def _fakes(gpu: bool, cpu_bf16: bool = True) -> dict[str, FakeBackend]:
    P = Precision
    no_gpu = None if gpu else "no NVIDIA GPU"
    return {
        fake.name: fake
        for fake in (
            FakeBackend("tensorrt", frozenset({P.FP32, P.FP16}), no_gpu),
            FakeBackend("onnxruntime-cuda", frozenset({P.FP32, P.FP16}), no_gpu),
            FakeBackend(
                "openvino",
                frozenset({P.FP32, P.BF16, P.INT8, P.W8A8}),
                refuses=None if cpu_bf16 else P.BF16,
            ),
            FakeBackend("onnxruntime", frozenset({P.FP32, P.FP16})),
        )
    }


@pytest.mark.parametrize(
    ("gpu", "precision", "expected"),
    [
        (False, Precision.FP32, "openvino"),
        (False, Precision.FP16, "onnxruntime"),
        (False, Precision.BF16, "openvino"),
        (False, Precision.W8A8, "openvino"),
        (True, Precision.FP16, "tensorrt"),
        (True, Precision.BF16, "openvino"),  # no GPU backend computes in bf16
    ],
)
def test_auto_takes_the_fastest_backend_that_has_the_precision(
    monkeypatch, gpu, precision, expected
):
    monkeypatch.setattr(backends, "BACKENDS", _fakes(gpu))
    choice = backends.auto_choice(BuildOptions(precision=precision))
    assert choice.backend == expected


def test_auto_says_why_it_passed_a_backend_by(monkeypatch):
    monkeypatch.setattr(backends, "BACKENDS", _fakes(gpu=False))
    reason = backends.auto_choice(BuildOptions(precision=Precision.FP16)).reason
    assert "openvino computes in fp32, bf16, int8 or w8a8" in reason and "\n" not in reason
    monkeypatch.setattr(backends, "BACKENDS", _fakes(gpu=True))
    reason = backends.auto_choice(BuildOptions(precision=Precision.BF16)).reason
    assert "no GPU backend usable here for bf16" in reason


def test_auto_asks_the_backend_what_this_machine_can_build(monkeypatch):
    monkeypatch.setattr(backends, "BACKENDS", _fakes(gpu=False, cpu_bf16=False))
    with pytest.raises(SdtrtError, match="this CPU cannot compute in bf16"):
        backends.auto_choice(BuildOptions(precision=Precision.BF16))


def test_a_build_in_fp16_on_auto_goes_where_fp16_is_and_says_so_in_one_line(caplog):
    options = BuildOptions(precision=Precision.FP16)
    with caplog.at_level(logging.INFO, logger=backends.__name__):
        chosen = backends.resolve_build(options).backend
    assert Precision.FP16 in chosen.precisions
    said = [r for r in caplog.records if r.getMessage().startswith("backend auto")]
    assert [r.getMessage() for r in said] == [
        f"backend auto: {chosen.name} ({backends.auto_choice(options).reason})"
    ]
    if chosen.name != backends.auto_choice().backend:  # shown without --verbose
        assert said[0].levelno == logging.WARNING


def test_doctor_says_what_auto_picks_here_for_each_precision():
    findings = {f.topic: f for f in diagnose()}
    auto = findings["backend auto, fp32"]
    assert auto.ok and auto.value.startswith(f"picks {backends.auto_choice().backend}: ")
    fp16 = findings["backend auto, fp16"]
    assert fp16.ok and fp16.value.startswith(
        f"picks {backends.auto_choice(BuildOptions(precision=Precision.FP16)).backend}: "
    )
    explicit = {f"backend auto, {p.value}" for p in Precision if p is not Precision.AUTO}
    assert explicit <= set(findings)
    assert "bf16 compute:" in findings["CPU"].value
    int8 = bool({"avx512_vnni", "avx_vnni", "amx_int8"} & cpu_flags())
    assert f"int8 dot products: {'yes' if int8 else 'no'}" in findings["CPU"].value


AMX = {"avx512f", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8"}
OPENVINO_PRECISIONS = frozenset({Precision.FP32, Precision.BF16, Precision.INT8, Precision.W8A8})


@pytest.mark.parametrize(
    ("backend", "device", "fastest", "precisions", "flags", "expected", "said"),
    [
        ("tensorrt", DeviceKind.NVIDIA_GPU, Precision.FP16, frozenset(Precision), set(), "fp16",
         "the VAE stays fp32 unless --fp16-vae"),
        ("openvino", DeviceKind.CPU, Precision.BF16, OPENVINO_PRECISIONS, AMX, "bf16",
         "natively (amx_bf16, avx512_bf16); the VAE too"),
        ("openvino", DeviceKind.CPU, Precision.FP32, OPENVINO_PRECISIONS, {"avx2", "fma"}, "fp32",
         "no bf16 instructions (avx512_bf16 or amx_bf16)"),
        ("onnxruntime", DeviceKind.CPU, Precision.FP32, frozenset({Precision.FP32, Precision.FP16}),
         AMX, "fp32", "onnxruntime computes fastest in fp32 here"),
        ("openvino-npu", DeviceKind.INTEL_NPU, Precision.FP16, frozenset({Precision.FP16}), AMX,
         "fp16", "on the intel-npu"),
    ],
)  # fmt: skip
def test_precision_auto_is_the_backends_fastest_here(
    backend, device, fastest, precisions, flags, expected, said
):
    choice = pick_precision(backend, device, fastest, precisions, flags)
    assert choice.precision.value == expected
    assert said in choice.reason and "\n" not in choice.reason


def test_a_build_resolves_auto_precision_and_keeps_why():
    resolved = backends.resolve_build(BuildOptions(backend="openvino"))
    fastest = resolved.backend.float_precision()
    assert resolved.options.precision is fastest
    assert resolved.options.backend == "openvino"
    assert resolved.picked["precision"].startswith(f"{fastest.value}: ")
    assert "backend" not in resolved.picked  # named, not picked
    named = backends.resolve_build(BuildOptions(backend="onnxruntime", precision=Precision.FP32))
    assert named.picked == {} and named.options.precision is Precision.FP32


def test_the_fp16_guard_on_auto_is_checked_against_what_auto_picked():
    assert BuildOptions(fp16_guard=True).precision is Precision.AUTO  # may be fp16: on a GPU
    with pytest.raises(InputError, match=r"add --precision fp16 \(auto picked fp32 on onnx"):
        backends.resolve_build(BuildOptions(backend="onnxruntime", fp16_guard=True))


def test_doctor_says_what_the_default_build_picks():
    finding = {f.topic: f for f in diagnose()}["default build (auto)"]
    backend = backends.auto_choice().backend
    precision = backends.auto_precision(backends.BACKENDS[backend]).precision.value
    assert finding.ok and finding.value.startswith(f"picks {backend} in {precision}: ")
