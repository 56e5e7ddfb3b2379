"""End to end on the tiny model: sdtrt's images against diffusers' from the same initial latents."""

import numpy as np
import pytest
import torch
from helpers import assert_same_image, psnr, using_scheduler

from sdtrt.runtime.pipeline import Pipeline
from sdtrt.runtime.schedulers import SCHEDULERS, scheduler_names
from sdtrt.tolerances import END_TO_END_PSNR_DB


@pytest.fixture(scope="module")
def pipe(tiny_engine_dir):
    with Pipeline.load(tiny_engine_dir) as pipeline:
        yield pipeline


def _reference(diffusers_pipeline, scheduler, seed=0, **kwargs):
    """diffusers' image with scheduler `scheduler` (as sdtrt names it) and a seeded generator."""
    if "latents" in kwargs:
        kwargs["latents"] = torch.from_numpy(kwargs["latents"])
    with using_scheduler(diffusers_pipeline, scheduler):
        generator = torch.Generator("cpu").manual_seed(seed)
        return diffusers_pipeline(**kwargs, generator=generator, output_type="np").images


def _latents(batch, height=64, width=64, seed=0):
    return np.random.default_rng(seed).standard_normal(
        (batch, 4, height // 2, width // 2), dtype=np.float32
    )


CASES = {
    "guided": dict(prompt="a photo of an astronaut riding a horse", num_inference_steps=12),
    "negative": dict(
        prompt="a castle at sunset", negative_prompt="blurry, dark", num_inference_steps=10
    ),
    "non_square": dict(prompt="a red car", height=48, width=96, num_inference_steps=8),
    "two_prompts": dict(
        prompt=["a cat", "a dog on the beach"], guidance_scale=5.0, num_inference_steps=8
    ),
    "unguided": dict(prompt="a bowl of fruit", guidance_scale=1.0, num_inference_steps=8),
    "empty_prompt": dict(prompt="", num_inference_steps=6),
}


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("scheduler", ["ddim", "euler", "pndm"])
def test_same_image_as_diffusers(pipe, diffusers_pipeline, scheduler, case):
    kwargs = dict(CASES[case])
    prompts = kwargs["prompt"] if isinstance(kwargs["prompt"], list) else [kwargs["prompt"]]
    kwargs["latents"] = _latents(len(prompts), kwargs.get("height", 64), kwargs.get("width", 64))
    expected = _reference(diffusers_pipeline, scheduler, **kwargs)
    actual = pipe(**kwargs, scheduler=scheduler, output_type="np").images
    assert_same_image(expected, actual)


# The flow-matching samplers sample SD 3 models only (tests/runtime/test_sd3_parity.py).
@pytest.mark.parametrize(
    "scheduler", [n for n in scheduler_names() if not SCHEDULERS[n].cls.flow_matching]
)
def test_every_scheduler_makes_diffusers_image(pipe, diffusers_pipeline, scheduler):
    """Initial latents given; the stochastic samplers' noise comes from the same seed."""
    kwargs = dict(
        prompt="a castle", negative_prompt="fog", height=48, width=80, num_inference_steps=7
    )
    kwargs["latents"] = _latents(1, 48, 80)
    expected = _reference(diffusers_pipeline, scheduler, seed=3, **kwargs)
    actual = pipe(**kwargs, scheduler=scheduler, seed=3, output_type="np").images
    assert_same_image(expected, actual)


@pytest.mark.parametrize("scheduler", ["pndm", "euler_a", "dpmpp_sde", "ddpm", "lcm"])
def test_same_seed_same_image(pipe, diffusers_pipeline, scheduler):
    """No latents given: the seed alone reproduces diffusers' torch.Generator("cpu") image,
    for a batch of prompts with several images each."""
    kwargs = dict(prompt=["a cat", "a lighthouse"], num_images_per_prompt=2, num_inference_steps=6)
    expected = _reference(diffusers_pipeline, scheduler, seed=1234, **kwargs)
    actual = pipe(**kwargs, scheduler=scheduler, seed=1234, output_type="np").images
    assert_same_image(expected, actual)
    numpy_noise = pipe(**kwargs, scheduler=scheduler, seed=1234, noise="numpy", output_type="np")
    assert psnr(expected, numpy_noise.images) < END_TO_END_PSNR_DB


def test_images_per_prompt(pipe, diffusers_pipeline):
    kwargs = dict(prompt=["a cat", "a tree"], num_images_per_prompt=2, num_inference_steps=6)
    kwargs["latents"] = _latents(4)
    expected = _reference(diffusers_pipeline, "pndm", **kwargs)
    assert_same_image(expected, pipe(**kwargs, output_type="np").images)


def test_a_different_scheduler_is_noticed(pipe, diffusers_pipeline):
    """The bar tells samplers apart. (Not DDIM from Euler: deterministic DDIM is Euler's method
    in another parametrisation, and on this model the two agree to ~75 dB.)"""
    kwargs = dict(prompt="a photo of an astronaut", num_inference_steps=12, latents=_latents(1))
    expected = _reference(diffusers_pipeline, "euler", **kwargs)
    actual = pipe(**kwargs, scheduler="pndm", output_type="np").images
    assert psnr(expected, actual) < END_TO_END_PSNR_DB


def test_pil_output_and_seeded_noise(pipe):
    first = pipe("a cat", num_inference_steps=3, seed=7)
    second = pipe("a cat", num_inference_steps=3, seed=7)
    other = pipe("a cat", num_inference_steps=3, seed=8)
    assert first.images[0].size == (64, 64) and first.images[0].mode == "RGB"
    assert np.array_equal(np.asarray(first.images[0]), np.asarray(second.images[0]))
    assert not np.array_equal(np.asarray(first.images[0]), np.asarray(other.images[0]))
    assert first.request.seed == 7 and first.request.scheduler == "pndm"
    assert len(first.timings.unet) == 4  # PNDM's PLMS evaluates its first timestep twice
