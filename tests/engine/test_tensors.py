import numpy as np
import pytest

from sdtrt.engine.tensors import ComponentIO, ShapeRange, TensorSpec, check_feeds
from sdtrt.errors import InputError

IO = ComponentIO(
    inputs=(
        TensorSpec(name="sample", dtype="float32", shape=("batch", 4, "h", "w")),
        TensorSpec(name="ids", dtype="int32", shape=("batch", 77)),
    ),
    outputs=(TensorSpec(name="out", dtype="float32", shape=("batch", 4, "h", "w")),),
    profile={
        "sample": ShapeRange(min=(1, 4, 8, 8), opt=(2, 4, 16, 16), max=(4, 4, 32, 32)),
        "ids": ShapeRange(min=(1, 77), opt=(2, 77), max=(4, 77)),
    },
)


def feeds(batch=2, h=16, w=16, ids_batch=None, sample_dtype=np.float32):
    return {
        "sample": np.zeros((batch, 4, h, w), dtype=sample_dtype),
        "ids": np.zeros((ids_batch or batch, 77), dtype=np.int32),
    }


def test_valid_feeds_pass():
    check_feeds("unet", IO, feeds())
    check_feeds("unet", IO, feeds(batch=1, h=8, w=32))


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"sample": np.zeros((2, 4, 16, 16), np.float32)}, "expected inputs"),
        ({**feeds(), "extra": np.zeros(1)}, "expected inputs"),
        (feeds(sample_dtype=np.float64), "must be float32, got float64"),
        ({**feeds(), "ids": np.zeros((2, 77, 1), np.int32)}, "must have 2 dimensions"),
        ({**feeds(), "ids": np.zeros((2, 76), np.int32)}, "needs size 77 on axis 1"),
        (feeds(ids_batch=3), "'batch' is 2 in 'sample' but 3 in 'ids'"),
        (feeds(h=64), "outside the built range (1, 4, 8, 8)..(4, 4, 32, 32)"),
        (feeds(batch=5), "outside the built range"),
    ],
)
def test_bad_feeds_name_the_problem(bad, message):
    with pytest.raises(InputError, match=None) as error:
        check_feeds("unet", IO, bad)
    assert message in str(error.value)
    assert str(error.value).startswith("unet: ")


def test_shape_range_contains():
    shape_range = ShapeRange(min=(1, 2), opt=(2, 3), max=(4, 5))
    assert shape_range.contains((1, 2)) and shape_range.contains((4, 5))
    assert not shape_range.contains((0, 3))
    assert not shape_range.contains((2, 6))
    assert not shape_range.contains((2, 3, 1))
