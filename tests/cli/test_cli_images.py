"""`sdtrt run --image/--mask/--strength`: image to image and inpainting from the command line."""

import json

import numpy as np
import pytest
from helpers import assert_one_line_error, sdtrt
from PIL import Image

from sdtrt.runtime.pipeline import Pipeline


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("inputs")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (40, 90, 3), np.uint8)).save(folder / "in.png")
    mask = np.zeros((40, 90), np.uint8)
    mask[10:30, 20:70] = 255
    Image.fromarray(mask).save(folder / "mask.png")
    Image.fromarray(rng.integers(0, 256, (300, 200, 3), np.uint8)).save(folder / "big.png")
    (folder / "notes.png").write_text("not a picture")
    return folder


def test_image_to_image_writes_the_pipelines_image(tiny_engine_dir, files, tmp_path):
    output = tmp_path / "out.png"
    result = sdtrt(
        "run", tiny_engine_dir, "a cat", "-o", output, "--steps", 6, "--seed", 3,
        "--image", files / "in.png", "--strength", 0.5, "--scheduler", "ddim",
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    written = Image.open(output)
    assert written.size == (90, 40)
    assert "Denoising strength: 0.5" in written.info["parameters"]
    assert "unet x 3" in result.stdout  # 6 steps at strength 0.5
    assert "image + vae encoder" in result.stdout
    with Pipeline.load(tiny_engine_dir) as pipe:
        expected = pipe(
            "a cat", image=files / "in.png", strength=0.5, num_inference_steps=6, seed=3,
            scheduler="ddim", negative_prompt="",
        ).images[0]  # fmt: skip
    assert np.array_equal(np.asarray(written), np.asarray(expected))


@pytest.mark.parametrize("engines", ["tiny_engine_dir", "tiny_inpaint_engine_dir"])
def test_inpainting_with_either_kind_of_model(engines, files, tmp_path, request):
    output = tmp_path / "out.png"
    result = sdtrt(
        "run", request.getfixturevalue(engines), "a cat", "-o", output, "--steps", 4,
        "--image", files / "in.png", "--mask", files / "mask.png", "--width", 96, "--batch", 2,
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    for name in ("out-0.png", "out-1.png"):
        image = Image.open(tmp_path / name)
        assert image.size == (96, 64)  # inpainting defaults to the native height, as diffusers
        assert "Denoising strength: 1.0" in image.info["parameters"]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--mask", "{files}/mask.png"], "--mask needs --image"),
        (["--image", "{files}/notes.png"], "notes.png cannot be read as an image"),
        (["--image", "{files}/missing.png"], "missing.png does not exist"),
        (["--image", "{files}/in.png", "--strength", "0"], "strength must be a number in (0, 1]"),
        (["--image", "{files}/in.png", "--strength", "1.2"], "strength must be a number in (0, 1]"),
        (["--image", "{files}/in.png", "--strength", "0.1"], "leaves no step to run"),
        (["--strength", "0.5"], "strength applies to an input image"),
        (["--image", "{files}/big.png"], "the image is 200x300 px: 300x200 is outside the built"),
    ],
)
def test_bad_image_options_get_one_line(tiny_engine_dir, files, tmp_path, options, message):
    output = tmp_path / "out.png"
    options = [option.format(files=files) for option in options]
    result = sdtrt("run", tiny_engine_dir, "a cat", "-o", output, "--steps", 5, *options)
    assert_one_line_error(result, message)
    assert not output.exists()


def test_engines_without_a_vae_encoder(engine_copy, files, tmp_path):
    manifest = engine_copy / "manifest.json"
    data = json.loads(manifest.read_text())
    del data["components"]["vae_encoder"]
    manifest.write_text(json.dumps(data))
    result = sdtrt(
        "run", engine_copy, "a cat", "-o", tmp_path / "o.png", "--image", files / "in.png"
    )
    assert_one_line_error(result, "rebuild with `sdtrt build --components")


def test_an_inpainting_model_asks_for_a_mask(tiny_inpaint_engine_dir, files, tmp_path):
    result = sdtrt(
        "run", tiny_inpaint_engine_dir, "a cat", "-o", tmp_path / "o.png",
        "--image", files / "in.png",
    )  # fmt: skip
    assert_one_line_error(result, "this is an inpainting model")
