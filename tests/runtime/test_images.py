import numpy as np
from PIL import Image

from sdtrt.runtime.postprocess import parameters_text, postprocess, save_png, to_pil


def test_postprocess_matches_diffusers_rounding():
    decoded = np.array([-2.0, -1.0, 0.0, 0.5, 1.0, 3.0], dtype=np.float32).reshape(1, 3, 1, 2)
    images = postprocess(decoded)
    assert images.shape == (1, 1, 2, 3)
    np.testing.assert_allclose(images.ravel(), [0, 0.5, 1, 0, 0.75, 1])
    pixels = np.asarray(to_pil(images)[0])
    assert pixels.tolist() == [[[0, 128, 255], [0, 191, 255]]]


def test_png_carries_parameters_and_nothing_is_left_over(tmp_path):
    text = parameters_text("a cat", "blurry", {"Steps": 20, "Sampler": "euler", "Seed": 1})
    assert text == "a cat\nNegative prompt: blurry\nSteps: 20, Sampler: euler, Seed: 1"
    assert parameters_text("a cat", "", {"Steps": 1}) == "a cat\nSteps: 1"
    path = tmp_path / "sub" / "out.png"
    save_png(Image.new("RGB", (8, 8)), path, text)
    assert Image.open(path).info["parameters"] == text
    assert [p.name for p in path.parent.iterdir()] == ["out.png"]
