import pytest

from sdtrt.engine.options import BuildOptions
from sdtrt.engine.ranges import check_batch, check_image_size, resolve_ranges
from sdtrt.errors import InputError


def test_defaults_span_half_to_double_the_native_size():
    ranges = resolve_ranges(BuildOptions(), native=(512, 512), size_step=8)
    assert ranges.size.min == (256, 256)
    assert ranges.size.opt == (512, 512)
    assert ranges.size.max == (1024, 1024)
    assert ranges.size_step == 8 and ranges.max_batch == 4


def test_defaults_round_outwards_to_the_size_step():
    ranges = resolve_ranges(BuildOptions(), native=(100, 60), size_step=16)
    assert ranges.size.min == (48, 16)  # at most half, on the step, never zero
    assert ranges.size.max == (208, 128)  # at least double, on the step


def test_prompt_chunks_default_to_three():
    assert resolve_ranges(BuildOptions(), (512, 512), 8).max_prompt_chunks == 3
    assert resolve_ranges(BuildOptions(max_prompt_chunks=5), (512, 512), 8).max_prompt_chunks == 5


def test_explicit_sizes_and_opt_clamped_into_range():
    options = BuildOptions(min_size=(512, 512), max_size=(768, 1024), max_batch=2)
    ranges = resolve_ranges(options, native=(512, 512), size_step=8)
    assert ranges.size.opt == (512, 512)
    options = BuildOptions(min_size=(640, 640), max_size=(768, 768))
    assert resolve_ranges(options, native=(512, 512), size_step=8).size.opt == (640, 640)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (dict(min_size=(500, 512)), "--min-size 500x512 must be positive multiples of 8"),
        (dict(max_size=(0, 512)), "--max-size 0x512"),
        (dict(min_size=(768, 768), max_size=(512, 512)), "min <= opt <= max"),
        (dict(max_batch=0), "--max-batch must be at least 1"),
        (dict(max_prompt_chunks=0), "--max-prompt-chunks must be at least 1"),
    ],
)
def test_bad_build_sizes(options, message):
    # Refused when the options are made (batch, chunks) or read against the model (sizes).
    with pytest.raises(InputError) as error:
        resolve_ranges(BuildOptions(**options), native=(512, 512), size_step=8)
    assert message in str(error.value)


def test_image_size_checks():
    ranges = resolve_ranges(BuildOptions(), native=(512, 512), size_step=8)
    check_image_size(ranges, 256, 1024)
    for height, width, message in [
        (500, 512, "height must be a positive multiple of 8, got 500"),
        (512, 0, "width must be a positive multiple of 8, got 0"),
        (1032, 512, "1032x512 is outside the built range (256..1024 high and 256..1024 wide)"),
        (248, 512, "outside the built range"),
    ]:
        with pytest.raises(InputError) as error:
            check_image_size(ranges, height, width)
        assert message in str(error.value)


def test_batch_checks():
    ranges = resolve_ranges(BuildOptions(max_batch=2), native=(64, 64), size_step=2)
    check_batch(ranges, 2)
    with pytest.raises(InputError, match="exceeds the built maximum of 2"):
        check_batch(ranges, 3)
    with pytest.raises(InputError, match="at least one image"):
        check_batch(ranges, 0)


def test_static_builds_one_shape():
    ranges = resolve_ranges(
        BuildOptions(static=True, opt_size=(512, 768), max_batch=2), (512, 512), 8
    )
    assert ranges.size.min == ranges.size.opt == ranges.size.max == (512, 768)
    check_batch(ranges, 2)
    check_batch(ranges, 1)  # the size is fixed, the batch is not: fewer images still work
    with pytest.raises(InputError, match="exceeds the built maximum of 2"):
        check_batch(ranges, 3)
    with pytest.raises(InputError, match="outside the built range"):
        check_image_size(ranges, 512, 512)
