"""Every registered backend implements the whole Backend protocol, and the registry's refusals
come from what the backends declare, not from a table of names."""

from __future__ import annotations

import inspect

import pytest

from sdtrt.engine.backends import BACKENDS, check_precision, resolve_build
from sdtrt.engine.base import Backend, DeviceKind
from sdtrt.engine.graph_style import GraphStyle
from sdtrt.engine.options import BuildOptions, Precision
from sdtrt.errors import InputError

# The protocol's attributes (annotations) and methods.
MEMBERS = {*Backend.__annotations__, *(n for n in vars(Backend) if not n.startswith("_"))}


@pytest.mark.parametrize("name", sorted(BACKENDS))
def test_each_backend_has_every_member_of_the_protocol(name):
    backend = BACKENDS[name]
    missing = [member for member in MEMBERS if not hasattr(backend, member)]
    assert not missing, missing
    assert backend.name == name
    assert isinstance(backend.device_kind, DeviceKind)
    assert isinstance(backend.graph_style, GraphStyle)
    assert backend.precisions and backend.precisions <= set(Precision)
    for method in ("build", "load", "check_build", "target"):
        ours = inspect.signature(getattr(backend, method)).parameters
        theirs = inspect.signature(getattr(Backend, method)).parameters
        assert list(ours) == [p for p in theirs if p != "self"], method


def test_a_precision_refusal_names_the_backends_that_have_it():
    onnxruntime = BACKENDS["onnxruntime"]
    with pytest.raises(InputError) as error:
        check_precision(onnxruntime, Precision.W8A8)
    having = [name for name, b in BACKENDS.items() if Precision.W8A8 in b.precisions]
    assert having and all(name in str(error.value) for name in having)
    assert "onnxruntime computes in fp32 or fp16" in str(error.value)
    check_precision(onnxruntime, Precision.FP16)  # declared: no refusal


def test_a_backend_refuses_its_own_way_before_the_registry_does():
    """OpenVINO on the CPU knows why fp16 is wrong there and what to use instead."""
    with pytest.raises(InputError, match="use --precision bf16"):
        resolve_build(BuildOptions(backend="openvino", precision=Precision.FP16))


def test_gpu_devices_are_told_apart_from_the_cpu():
    kinds = {name: backend.device_kind for name, backend in BACKENDS.items()}
    assert not kinds["onnxruntime"].is_gpu and not kinds["openvino"].is_gpu
    assert kinds["onnxruntime-cuda"].is_gpu and kinds["tensorrt"].is_gpu
    assert kinds["openvino-gpu"].is_gpu and not kinds["openvino-npu"].is_gpu
