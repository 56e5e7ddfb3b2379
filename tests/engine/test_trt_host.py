"""The TensorRT backend's host-side decisions, without a GPU."""

from pathlib import Path

import pytest

from sdtrt.engine.tensorrt.host import check_compatible, nbytes, profile_shapes
from sdtrt.engine.tensors import ComponentIO, ShapeRange, TensorSpec
from sdtrt.errors import EngineIncompatible, InputError

UNET = ComponentIO(
    inputs=(
        TensorSpec(name="sample", dtype="float32", shape=("batch", 4, "h", "w")),
        TensorSpec(name="timestep", dtype="float32", shape=("batch",)),
        TensorSpec(name="context", dtype="float32", shape=("batch", 77, 768)),
        TensorSpec(name="fixed", dtype="int32", shape=(3,)),
    ),
    outputs=(TensorSpec(name="out", dtype="float16", shape=("batch", 4, "h", "w")),),
    profile={
        "sample": ShapeRange(min=(1, 4, 32, 32), opt=(2, 4, 64, 64), max=(8, 4, 128, 128)),
        "timestep": ShapeRange(min=(1,), opt=(2,), max=(8,)),
        "context": ShapeRange(min=(1, 77, 768), opt=(2, 77, 768), max=(8, 77, 768)),
    },
)


def test_profile_covers_every_input():
    shapes = {name: (low, opt, high) for name, low, opt, high in profile_shapes(UNET)}
    assert shapes["sample"] == ((1, 4, 32, 32), (2, 4, 64, 64), (8, 4, 128, 128))
    assert shapes["fixed"] == ((3,), (3,), (3,))


def test_dynamic_input_without_range_is_refused():
    broken = UNET.model_copy(update={"profile": {}})
    with pytest.raises(InputError, match="has dynamic dims but no shape range"):
        profile_shapes(broken)


def test_buffer_sizes_follow_shape_and_dtype():
    assert nbytes((2, 4, 40, 56), "float16") == 2 * 4 * 40 * 56 * 2
    assert nbytes((2, 77), "int32") == 2 * 77 * 4


def test_engines_from_another_release_or_gpu_are_refused_before_loading():
    settings = {
        "tensorrt_version": "10.13.0.35",
        "compute_capability": "8.9",
        "gpu_name": "NVIDIA L4",
    }
    check_compatible(settings, "10.13.0.35", "8.9", Path("e"))
    check_compatible(settings, "10.13.0", "8.9", Path("e"))  # the same release, shorter version
    with pytest.raises(
        EngineIncompatible, match="built with TensorRT 10.13.0.35, this is TensorRT 11.0.0"
    ):
        check_compatible(settings, "11.0.0", "8.9", Path("e"))
    with pytest.raises(
        EngineIncompatible,
        match=r"built for NVIDIA L4 \(compute capability 8.9\), this GPU has 9.0",
    ):
        check_compatible(settings, "10.13.0.35", "9.0", Path("e"))
