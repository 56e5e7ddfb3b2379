"""The canny preprocessor: the edges of a photo as the A1111 ControlNet extension's `canny`
module makes them (resized to the processor resolution on the short side, then OpenCV's Canny
with the two thresholds), white on black in three channels."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from sdtrt.errors import InputError
from sdtrt.runtime.hint_preprocessors import canny, run_preprocessor


def _square(level: int, size: tuple[int, int] = (128, 96)) -> Image.Image:
    """A square of grey `level` on black, its sides at a quarter and three quarters."""
    width, height = size
    pixels = np.zeros((height, width, 3), np.uint8)
    pixels[height // 4 : 3 * height // 4, width // 4 : 3 * width // 4] = level
    return Image.fromarray(pixels)


def test_edges_are_the_squares_outline_at_the_processor_resolution():
    edges = np.asarray(canny(_square(255)))
    assert edges.shape == (512, 683, 3)  # 96 x 128 with its short side made 512
    assert set(np.unique(edges)) == {0, 255}
    assert (edges[..., 0] == edges[..., 2]).all()
    on = edges[..., 0] > 0
    rows, columns = np.nonzero(on)
    # Every edge pixel lies on the square's outline (within the filter's reach), none inside.
    near_top_or_bottom = (np.abs(rows - 128) <= 3) | (np.abs(rows - 384) <= 3)
    near_sides = (np.abs(columns - 170) <= 3) | (np.abs(columns - 511) <= 3)
    assert (near_top_or_bottom | near_sides).all()
    assert on[128 - 3 : 128 + 4, 200:480].any(axis=0).all()  # the top side, unbroken
    assert not on[200:300, 250:400].any()


def test_the_thresholds_decide_which_edges_count():
    faint = _square(40)
    assert np.asarray(canny(faint, 10, 30)).any()
    assert not np.asarray(canny(faint, 300, 600)).any()
    assert np.asarray(canny(faint, 10, 30, resolution=256)).shape == (256, 341, 3)


def test_bad_settings_are_one_line():
    with pytest.raises(InputError, match="0 <= low <= high"):
        canny(_square(255), 200, 100)
    with pytest.raises(InputError, match="unknown hint preprocessor 'depth'"):
        run_preprocessor("depth", _square(255))
    plain = _square(255)
    assert run_preprocessor("none", plain) is plain
    defaults = np.asarray(run_preprocessor("canny", plain, (None, None)))
    np.testing.assert_array_equal(defaults, np.asarray(canny(plain, 100, 200)))
