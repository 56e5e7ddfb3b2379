"""SD 2.x 768-v, SD-Turbo and latent consistency models on their tiny lookalikes, against
diffusers' own pipelines: v-prediction with "!" padding, trailing timesteps without guidance,
and a UNet that embeds the guidance scale instead of running unconditional rows."""

import diffusers
import numpy as np
import pytest
import torch
from helpers import assert_same_image, using_scheduler

from sdtrt.runtime.pipeline import Pipeline


def _compare(preset_build, preset, reference_class, scheduler=None, seed=0, **kwargs):
    folder, engines = preset_build(preset)
    reference = getattr(diffusers, reference_class).from_pretrained(folder)
    reference.set_progress_bar_config(disable=True)
    with using_scheduler(reference, scheduler):
        generator = torch.Generator("cpu").manual_seed(seed)
        expected = reference(**kwargs, generator=generator, output_type="np").images
    with Pipeline.load(engines) as pipe:
        result = pipe(**kwargs, scheduler=scheduler, seed=seed, output_type="np")
    assert_same_image(expected, result.images)
    return result


@pytest.mark.parametrize("scheduler", [None, "euler", "dpmpp_2m"])
def test_v_prediction_model_matches_diffusers(preset_build, scheduler):
    _compare(
        preset_build, "tiny-v", "StableDiffusionPipeline", scheduler, seed=1,
        prompt=["a cat", "a castle"], negative_prompt=["fog", "rain"], num_inference_steps=8,
    )  # fmt: skip


@pytest.mark.parametrize("steps", [1, 2, 4])
def test_turbo_model_matches_diffusers(preset_build, steps):
    result = _compare(
        preset_build, "tiny-turbo", "StableDiffusionPipeline", seed=steps,
        prompt="a cat", guidance_scale=0.0, num_inference_steps=steps,
    )  # fmt: skip
    assert len(result.timings.unet) == steps


def test_latent_consistency_model_defaults_match_diffusers(preset_build):
    """LatentConsistencyModelPipeline's own defaults (4 steps, guidance 8.5 embedded): one UNet
    row per image, no unconditional rows."""
    result = _compare(preset_build, "tiny-lcm", "LatentConsistencyModelPipeline", prompt="a cat")
    assert result.request.steps == 4 and result.request.guidance_scale == 8.5
    assert not result.request.guided and len(result.timings.unet) == 4


def test_latent_consistency_model_matches_diffusers(preset_build):
    """(diffusers' LatentConsistencyModelPipeline runs only its LCM scheduler.)"""
    _compare(
        preset_build, "tiny-lcm", "LatentConsistencyModelPipeline", seed=2,
        prompt=["a cat", "a dog"], num_images_per_prompt=2, guidance_scale=3.0,
        num_inference_steps=6,
    )  # fmt: skip


@pytest.mark.parametrize("scheduler", ["lcm", "euler"])
def test_latent_consistency_model_in_the_plain_pipeline(preset_build, scheduler):
    """StableDiffusionPipeline runs a UNet with time_cond_proj_dim the same way, with any
    scheduler; latents given."""
    latents = np.random.default_rng(0).standard_normal((1, 4, 32, 32), dtype=np.float32)
    _compare(
        preset_build, "tiny-lcm", "StableDiffusionPipeline", scheduler, prompt="a lighthouse",
        latents=torch.from_numpy(latents), guidance_scale=6.0, num_inference_steps=3,
    )  # fmt: skip
