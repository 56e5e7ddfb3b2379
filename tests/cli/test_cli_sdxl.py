"""SDXL from the command line: a preset built by name, `--prompt-2`, and `--refiner`, whose
image is the base model's latents finished by the refiner as the API composes them."""

import json

import numpy as np
import pytest
from helpers import assert_one_line_error, sdtrt
from PIL import Image

from sdtrt.runtime.pipeline import Pipeline


def test_build_an_sdxl_preset_by_name(tmp_path):
    output = tmp_path / "engines"
    result = sdtrt("build", "tiny-sdxl-refiner", "--output", output, "--backend", "onnxruntime")
    assert result.exit_code == 0, result.stderr
    manifest = json.loads((output / "manifest.json").read_text())
    assert manifest["model"]["family"] == "stable-diffusion-xl"
    assert manifest["model"]["requires_aesthetics_score"] is True
    assert sorted(manifest["components"]) == [
        "text_encoder_2", "unet", "vae_decoder", "vae_encoder",
    ]  # fmt: skip
    assert manifest["tokenizers"] == {"text_encoder_2": "tokenizer_2/tokenizer.json"}
    assert sorted(p.name for p in output.iterdir()) == [
        "manifest.json", "scheduler", "text_encoder_2", "tokenizer_2", "unet", "vae_decoder",
        "vae_encoder",
    ]  # fmt: skip


@pytest.mark.slow  # builds the tiny refiner: ~50 s; the refiner's parity runs by default
def test_refiner_finishes_the_base_models_latents(preset_build, tmp_path):
    _, base = preset_build("tiny-sdxl")
    _, refiner = preset_build("tiny-sdxl-refiner")
    output = tmp_path / "out.png"
    result = sdtrt(
        "run", base, "a lighthouse", "--prompt-2", "an etching", "--refiner", refiner,
        "--refiner-start", 0.7, "--steps", 10, "--seed", 4, "--batch", 2, "-o", output,
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert "base model timings" in result.stdout and "refiner timings" in result.stdout
    kwargs = dict(num_inference_steps=10, seed=4, num_images_per_prompt=2, prompt_2="an etching")
    with Pipeline.load(base) as first, Pipeline.load(refiner) as second:
        latents = first("a lighthouse", denoising_end=0.7, output_type="latent", **kwargs)
        expected = second("a lighthouse", image=latents.images, denoising_start=0.7, **kwargs)
    for index, image in enumerate(expected.images):
        written = np.asarray(Image.open(tmp_path / f"out-{index}.png"))
        assert np.array_equal(written, np.asarray(image))


def test_sdxl_options_get_one_line(preset_build, tiny_engine_dir, tmp_path):
    _, base = preset_build("tiny-sdxl")
    output = tmp_path / "out.png"
    result = sdtrt("run", base, "a cat", "--refiner", base, "--refiner-start", 1, "-o", output)
    assert_one_line_error(result, "--refiner-start must be between 0 and 1, got 1.0")
    result = sdtrt("run", tiny_engine_dir, "a cat", "--prompt-2", "a dog", "-o", output)
    assert_one_line_error(result, "prompt_2: for SDXL and SD 3 models; this is a stable-diffusion")
    assert not output.exists()
