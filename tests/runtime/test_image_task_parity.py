"""Image to image and inpainting on the tiny models against diffusers' own pipelines: the same
seed (and, where given, the same latents) must give the same images, both kinds of inpainting
model included (a 4-channel UNet with latent blending, a 9-channel inpainting UNet)."""

import diffusers
import numpy as np
import pytest
import torch
from helpers import assert_same_image, psnr, using_scheduler
from PIL import Image

from sdtrt.errors import InputError
from sdtrt.runtime.pipeline import Pipeline
from sdtrt.tolerances import END_TO_END_PSNR_DB


def make_image(height=57, width=75):
    """A smooth picture with an edge, at a size that is not a multiple of the VAE factor."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    pixels = np.stack([x / width, y / height, 0.5 + 0.5 * np.sin(x / 5 + y / 7)], axis=-1)
    pixels[height // 3 : height // 2, :] = (0.9, 0.1, 0.2)
    return Image.fromarray((pixels * 255).round().astype(np.uint8))


def make_mask(height=57, width=75):
    mask = np.zeros((height, width), np.uint8)
    mask[height // 5 : height * 3 // 4, width // 4 : width * 4 // 5] = 255
    return Image.fromarray(mask)


@pytest.fixture(scope="module")
def pipe(tiny_engine_dir):
    with Pipeline.load(tiny_engine_dir) as pipeline:
        yield pipeline


@pytest.fixture(scope="module")
def inpaint_pipe(tiny_inpaint_engine_dir):
    with Pipeline.load(tiny_inpaint_engine_dir) as pipeline:
        yield pipeline


@pytest.fixture(scope="module")
def references(tiny_model_dir, tiny_inpaint_model_dir):
    """diffusers' pipelines: image to image and 4-channel inpainting on the tiny model,
    9-channel inpainting on the tiny inpainting model."""
    made = {
        "img2img": diffusers.StableDiffusionImg2ImgPipeline.from_pretrained(tiny_model_dir),
        "inpaint": diffusers.StableDiffusionInpaintPipeline.from_pretrained(tiny_model_dir),
        "inpaint9": diffusers.StableDiffusionInpaintPipeline.from_pretrained(
            tiny_inpaint_model_dir
        ),
    }
    for reference in made.values():
        reference.set_progress_bar_config(disable=True)
    return made


def reference_images(reference, scheduler, seed, **kwargs):
    if "latents" in kwargs:
        kwargs["latents"] = torch.from_numpy(kwargs["latents"])
    with using_scheduler(reference, scheduler):
        generator = torch.Generator("cpu").manual_seed(seed)
        return reference(**kwargs, generator=generator, output_type="np").images


CASES = {
    "guided": dict(prompt="a photo of an astronaut riding a horse", strength=0.6),
    "negative": dict(prompt="a castle at sunset", negative_prompt="blurry, dark", strength=0.75),
    "unguided": dict(prompt="a bowl of fruit", guidance_scale=1.0, strength=0.5),
    "two_prompts_two_images": dict(
        prompt=["a cat", "a dog on the beach"],
        guidance_scale=5.0,
        num_images_per_prompt=2,
        strength=0.7,
    ),
    "full_strength": dict(prompt="a lighthouse", strength=1.0),
}


def compare(actual_pipe, reference, case, scheduler, seed=5, **extra):
    kwargs = {**CASES[case], "num_inference_steps": 8, **extra}
    expected = reference_images(reference, scheduler, seed, **kwargs)
    actual = actual_pipe(**kwargs, scheduler=scheduler, seed=seed, output_type="np").images
    print(f"PSNR {scheduler} {case}: {psnr(expected, actual):.1f} dB")
    assert_same_image(expected, actual)
    return actual


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("scheduler", ["ddim", "euler"])
def test_image_to_image(pipe, references, case, scheduler):
    """The image's own size rounded down to the VAE factor: 57x75 px is made at 56x74."""
    actual = compare(pipe, references["img2img"], case, scheduler, image=make_image())
    assert actual.shape[1:3] == (56, 74)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("scheduler", ["ddim", "euler"])
def test_inpaint_with_an_ordinary_model(pipe, references, case, scheduler):
    compare(
        pipe, references["inpaint"], case, scheduler,
        image=make_image(), mask_image=make_mask(), height=48, width=64,
    )  # fmt: skip


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("scheduler", ["ddim", "euler"])
def test_inpaint_with_an_inpainting_model(inpaint_pipe, references, case, scheduler):
    compare(
        inpaint_pipe, references["inpaint9"], case, scheduler,
        image=make_image(), mask_image=make_mask(), height=48, width=64,
    )  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("scheduler", ["pndm", "euler_a", "dpmpp_2m", "heun", "lms", "unipc"])
def test_other_schedulers_start_where_diffusers_does(pipe, references, scheduler):
    """Counter-based PNDM, second-order Heun, multistep solvers and ancestral noise each cut
    the schedule by strength as diffusers does."""
    compare(pipe, references["img2img"], "negative", scheduler, image=make_image())
    compare(
        pipe, references["inpaint"], "guided", scheduler,
        image=make_image(), mask_image=make_mask(), height=64, width=64,
    )  # fmt: skip


@pytest.mark.parametrize("kind", ["inpaint", "inpaint9"])
def test_inpaint_from_given_latents(pipe, inpaint_pipe, references, kind):
    """diffusers' `latents=` for inpainting: the starting noise, whatever the strength."""
    latents = np.random.default_rng(2).standard_normal((1, 4, 32, 32), dtype=np.float32)
    actual_pipe = pipe if kind == "inpaint" else inpaint_pipe
    compare(
        actual_pipe, references[kind], "negative", "ddim",
        image=make_image(), mask_image=make_mask(), latents=latents,
    )  # fmt: skip


def test_arrays_are_read_as_diffusers_reads_them(pipe, references):
    """A float array in [0, 1] (resized by nearest neighbour) and a uint8 array (read as the
    PIL image it is)."""
    pixels = np.asarray(make_image(), dtype=np.float32) / 255
    compare(pipe, references["img2img"], "guided", "ddim", image=pixels)
    as_pil = pipe(
        "a cat", image=make_image(), num_inference_steps=4, seed=1, output_type="np"
    ).images
    as_uint8 = pipe(
        "a cat", image=np.asarray(make_image()), num_inference_steps=4, seed=1, output_type="np"
    ).images
    assert np.array_equal(as_pil, as_uint8)


def test_a_mask_of_another_size_is_resized_like_diffusers(pipe, references):
    compare(
        pipe, references["inpaint"], "guided", "ddim",
        image=make_image(), mask_image=make_mask(40, 30), height=64, width=48,
    )  # fmt: skip


def test_strength_cuts_the_schedule(pipe):
    kwargs = dict(image=make_image(), strength=0.5, num_inference_steps=10, seed=0)
    result = pipe("a cat", scheduler="ddim", **kwargs)
    assert len(result.timings.unet) == 5 and result.strength == 0.5
    assert len(pipe("a cat", **kwargs).timings.unet) == 6  # PNDM repeats its first timestep
    assert pipe("a cat", image=make_image(), num_inference_steps=10).strength == 0.8
    assert len(pipe("a cat", num_inference_steps=3).timings.unet) == 4  # PNDM: 3 + 1


def test_the_image_matters(pipe, references):
    """The bar tells a different input image apart."""
    kwargs = {**CASES["guided"], "num_inference_steps": 8}
    expected = reference_images(references["img2img"], "ddim", 5, image=make_image(), **kwargs)
    flipped = make_image().transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    actual = pipe(**kwargs, image=flipped, scheduler="ddim", seed=5, output_type="np").images
    assert psnr(expected, actual) < END_TO_END_PSNR_DB


@pytest.mark.parametrize(("which", "padding"), [("inpaint", 0), ("inpaint", 12), ("inpaint9", 4)])
def test_padding_mask_crop_matches_diffusers(
    pipe, inpaint_pipe, references, which, padding, tmp_path
):
    """Inpainting a crop around the mask, pasted back: the same PNG pixels as diffusers'."""
    image, mask = make_image(90, 120), make_mask(90, 120)
    kwargs = dict(prompt="a cat", num_inference_steps=6, strength=0.8, padding_mask_crop=padding)
    generator = torch.Generator("cpu").manual_seed(2)
    expected = references[which](
        **kwargs, image=image, mask_image=mask, generator=generator
    ).images[0]
    image.save(tmp_path / "in.png")
    mask.save(tmp_path / "mask.png")  # files work as images do
    ours = inpaint_pipe if which == "inpaint9" else pipe
    actual = ours(**kwargs, image=tmp_path / "in.png", mask_image=tmp_path / "mask.png", seed=2)
    assert actual.images[0].size == (120, 90)
    assert_same_image(np.asarray(expected) / 255.0, np.asarray(actual.images[0]) / 255.0)
    outside = np.asarray(mask) == 0  # the unmasked pixels are the input image's
    assert np.array_equal(np.asarray(actual.images[0])[outside], np.asarray(image)[outside])


def test_padding_mask_crop_errors(pipe):
    image, mask = make_image(), make_mask()
    with pytest.raises(InputError, match="padding_mask_crop is a margin"):
        pipe("a cat", image=image, padding_mask_crop=4, num_inference_steps=2)
    with pytest.raises(InputError, match="padding_mask_crop is a margin"):
        pipe("a cat", image=image, mask_image=mask, padding_mask_crop=-1, num_inference_steps=2)
    with pytest.raises(InputError, match="not arrays"):
        floats = np.asarray(image, np.float32) / 255  # uint8 arrays are taken as images
        pipe("a cat", image=floats, mask_image=mask, padding_mask_crop=4, num_inference_steps=2)
    with pytest.raises(InputError, match="leave output_type 'pil'"):
        pipe("a cat", image=image, mask_image=mask, padding_mask_crop=4, output_type="np",
             num_inference_steps=2)  # fmt: skip
    with pytest.raises(InputError, match="black everywhere"):
        black = Image.fromarray(np.zeros((57, 75), np.uint8))
        pipe("a cat", image=image, mask_image=black, padding_mask_crop=4, num_inference_steps=2)
