"""Input images and masks prepared as diffusers' image processors prepare them, the scheduler
pieces image tasks add, and one clear error for every bad image input."""

import json

import diffusers
import numpy as np
import pytest
import torch
from diffusers.image_processor import VaeImageProcessor
from PIL import Image

from sdtrt.errors import ArtifactError, InputError
from sdtrt.runtime.families import FAMILIES
from sdtrt.runtime.pipeline import Pipeline
from sdtrt.runtime.preprocess import (
    default_size,
    nearest_resize,
    open_image,
    preprocess_image,
    preprocess_mask,
)
from sdtrt.runtime.schedulers import SCHEDULERS, create_scheduler


def picture(height, width, mode="RGB", seed=0):
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, channels), np.uint8)
    return Image.fromarray(pixels.squeeze(-1) if channels == 1 else pixels, mode)


@pytest.mark.parametrize(("size", "mode"), [((57, 75), "RGB"), ((64, 64), "RGBA"), ((30, 90), "L")])
def test_images_as_diffusers_prepares_them(size, mode):
    """Other modes than RGB are converted after resizing: diffusers' `do_convert_rgb` (off in
    its Stable Diffusion pipelines, which then fail on them)."""
    image = picture(*size, mode=mode)
    processor = VaeImageProcessor(vae_scale_factor=8, do_convert_rgb=mode != "RGB")
    for height, width in [default_size(image, 8), (48, 96)]:
        expected = processor.preprocess(image, height=height, width=width).numpy()
        np.testing.assert_array_equal(preprocess_image(image, height, width), expected)


def test_masks_as_diffusers_prepares_them():
    processor = VaeImageProcessor(
        vae_scale_factor=8, do_normalize=False, do_binarize=True, do_convert_grayscale=True
    )
    for mask in (picture(57, 75, "L"), picture(40, 30, "RGB", seed=1)):
        expected = processor.preprocess(mask, height=64, width=48).numpy()
        actual = preprocess_mask(mask, 64, 48)
        np.testing.assert_array_equal(actual, expected)
        assert set(np.unique(actual)) <= {0.0, 1.0}


def test_arrays_resize_by_torchs_nearest_rule():
    array = np.random.default_rng(0).random((1, 3, 57, 75), dtype=np.float32)
    for height, width in [(56, 74), (64, 48), (19, 150)]:
        expected = torch.nn.functional.interpolate(torch.from_numpy(array), size=(height, width))
        np.testing.assert_array_equal(nearest_resize(array, height, width), expected.numpy())


@pytest.mark.parametrize(
    "scheduler", ["ddim", "ddpm", "pndm", "euler", "heun", "dpmpp_2m", "unipc"]
)
def test_add_noise_and_start_match_diffusers(scheduler):
    """The first timestep after cutting by strength, and the image noised to it."""
    from sdtrt.export.presets import SD1_SCHEDULER

    choice = SCHEDULERS[scheduler]
    config = {**SD1_SCHEDULER, **choice.overrides}
    reference = getattr(diffusers, choice.cls.diffusers_name).from_config(config)
    ours = create_scheduler(scheduler, config)
    steps, strength = 10, 0.55
    reference.set_timesteps(steps)
    t_start = FAMILIES["stable-diffusion"].skipped_steps(steps, strength)
    first = reference.timesteps[t_start * reference.order :][:1]
    if hasattr(reference, "set_begin_index"):
        reference.set_begin_index(t_start * reference.order)
    rng = np.random.default_rng(0)
    original, noise = (rng.standard_normal((1, 4, 8, 8), dtype=np.float32) for _ in range(2))
    expected = reference.add_noise(torch.from_numpy(original), torch.from_numpy(noise), first)
    plan, begin = ours.start_at(ours.plan(steps), t_start)
    assert float(ours.timesteps(plan)[begin]) == pytest.approx(float(first[0]))
    actual = ours.add_noise(original, noise, begin, plan)
    np.testing.assert_allclose(actual, expected.numpy(), rtol=1e-6, atol=1e-6)


def test_unreadable_files_get_one_line(tmp_path):
    text = tmp_path / "notes.png"
    text.write_text("not a picture")
    with pytest.raises(InputError, match=r"notes.png cannot be read as an image"):
        open_image(text)
    with pytest.raises(InputError, match=r"missing.png does not exist"):
        open_image(tmp_path / "missing.png")


@pytest.fixture(scope="module")
def pipe(tiny_engine_dir):
    with Pipeline.load(tiny_engine_dir) as pipeline:
        yield pipeline


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(mask_image=picture(64, 64, "L")), "a mask needs an image to inpaint"),
        (dict(strength=0.5), "strength applies to an input image"),
        (dict(image=picture(64, 64), strength=0.0), r"strength must be a number in \(0, 1\]"),
        (dict(image=picture(64, 64), strength=1.5), r"strength must be a number in \(0, 1\]"),
        (dict(image=picture(64, 64), strength=0.05), "strength 0.05 with 10 steps leaves no step"),
        (dict(image=picture(300, 200)), "the image is 200x300 px: 300x200 is outside the built"),
        (dict(image=picture(64, 64), latents=np.zeros((1, 4, 32, 32), np.float32)), "latents="),
        (dict(image=np.zeros((64, 64, 3), np.int32)), "image array must be uint8 or float"),
        (dict(image=np.full((64, 64, 3), np.nan, np.float32)), "NaN"),
        (dict(image=42), "image must be a PIL image, a numpy array or a file path"),
    ],
)
def test_bad_image_requests_get_one_line(pipe, kwargs, message):
    with pytest.raises(InputError, match=message):
        pipe("a cat", num_inference_steps=10, **kwargs)


def test_engines_without_a_vae_encoder_say_how_to_rebuild(engine_copy):
    manifest = engine_copy / "manifest.json"
    data = json.loads(manifest.read_text())
    del data["components"]["vae_encoder"]
    manifest.write_text(json.dumps(data))
    with Pipeline.load(engine_copy) as pipe:
        assert pipe("a cat", num_inference_steps=1).images  # text to image still works
        with pytest.raises(ArtifactError, match="no VAE encoder.*rebuild with `sdtrt build"):
            pipe("a cat", image=picture(64, 64))


def test_an_inpainting_model_needs_image_and_mask(tiny_inpaint_engine_dir):
    with Pipeline.load(tiny_inpaint_engine_dir) as pipe:
        for kwargs in ({}, {"image": picture(64, 64)}):
            with pytest.raises(InputError, match="this is an inpainting model"):
                pipe("a cat", **kwargs)


def test_an_image_declaring_too_many_pixels_is_refused_before_decoding(tmp_path):
    """A decompression bomb: a small file whose pixels would fill the memory."""
    bomb = tmp_path / "bomb.png"
    Image.new("1", (8200, 8200)).save(bomb)
    assert bomb.stat().st_size < 200_000
    with pytest.raises(InputError, match=r"is 8200x8200 pixels; the most it may have is"):
        open_image(bomb)
