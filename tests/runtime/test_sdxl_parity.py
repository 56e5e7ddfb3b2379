"""SDXL on the tiny SDXL presets against diffusers' own SDXL pipelines: text to image, image to
image, both kinds of inpainting, the refiner and the base-to-refiner hand-off, SDXL-Turbo, and
the A1111 prompt syntax re-derived in torch. Same latents or seeds must give the same images."""

import numpy as np
import pytest
import torch
from helpers import assert_same_image, using_scheduler
from reference_pair import Pair, a_mask, an_image

from sdtrt.errors import InputError
from sdtrt.runtime.pipeline import Pipeline
from sdtrt.runtime.schedulers import SCHEDULERS
from sdtrt.tolerances import EXPORT_FP32_RELATIVE


def _latents(batch, height=64, width=64, seed=0):
    return np.random.default_rng(seed).standard_normal(
        (batch, 4, height // 2, width // 2), dtype=np.float32
    )


@pytest.fixture(scope="module")
def sdxl(preset_build):
    return Pair(preset_build, "tiny-sdxl", "StableDiffusionXLPipeline")


TEXT_CASES = {
    # Steps and guidance left to the defaults (SDXL's 5.0), no negative prompt: zero
    # conditioning for the unconditional rows (force_zeros_for_empty_prompt).
    "defaults": dict(prompt="a photo of an astronaut riding a horse", num_inference_steps=8),
    "empty_negative": dict(prompt="a castle", negative_prompt="", num_inference_steps=6),
    "negative": dict(prompt="a castle", negative_prompt="blurry, dark", num_inference_steps=6),
    "unguided": dict(prompt="a bowl of fruit", guidance_scale=1.0, num_inference_steps=6),
    "second_prompts": dict(
        prompt="a cat",
        prompt_2="an oil painting",
        negative_prompt="fog",
        negative_prompt_2="noise",
        guidance_scale=6.0,
        num_inference_steps=6,
    ),  # fmt: skip
    "two_prompts_two_images": dict(
        prompt=["a cat", "a dog on the beach"], num_images_per_prompt=2, num_inference_steps=5
    ),
    "non_square": dict(prompt="a red car", height=48, width=96, num_inference_steps=6),
    "clip_skip": dict(
        prompt="a lighthouse", negative_prompt="rain", clip_skip=1, num_inference_steps=6
    ),  # fmt: skip
    "sizes": dict(
        prompt="a tree",
        original_size=(256, 128),
        crops_coords_top_left=(16, 8),
        target_size=(64, 64),
        num_inference_steps=6,
    ),  # fmt: skip
}


@pytest.mark.parametrize("case", TEXT_CASES)
@pytest.mark.parametrize("scheduler", [None, "dpmpp_2m"])
def test_text_to_image_matches_diffusers(sdxl, case, scheduler):
    kwargs = dict(TEXT_CASES[case])
    prompts = kwargs["prompt"] if isinstance(kwargs["prompt"], list) else [kwargs["prompt"]]
    batch = len(prompts) * kwargs.get("num_images_per_prompt", 1)
    kwargs["latents"] = _latents(batch, kwargs.get("height", 64), kwargs.get("width", 64))
    sdxl.check(scheduler, **kwargs)


def test_seed_alone_matches_diffusers(sdxl):
    sdxl.check("euler_a", seed=77, prompt=["a cat", "a ship"], num_inference_steps=5)


def test_zero_negative_conditioning_is_not_that_of_an_empty_prompt(sdxl):
    latents = _latents(1)
    zero = sdxl.actual(prompt="a castle", num_inference_steps=4, latents=latents)
    empty = sdxl.actual(
        prompt="a castle", negative_prompt="", num_inference_steps=4, latents=latents
    )
    assert not np.allclose(zero, empty, atol=1e-3)


@pytest.fixture(scope="module")
def sdxl_img2img(preset_build):
    return Pair(preset_build, "tiny-sdxl", "StableDiffusionXLImg2ImgPipeline")


@pytest.fixture(scope="module")
def sdxl_inpaint(preset_build):
    return Pair(preset_build, "tiny-sdxl", "StableDiffusionXLInpaintPipeline")


@pytest.mark.parametrize("scheduler", [None, "ddim"])
def test_image_to_image_matches_diffusers(sdxl_img2img, scheduler):
    sdxl_img2img.check(scheduler, seed=3, prompt="a cat", image=an_image(), num_inference_steps=10)
    sdxl_img2img.check(
        scheduler, seed=4, prompt=["a cat", "a dog"], negative_prompt="blur", image=an_image(),
        strength=0.6, num_images_per_prompt=2, num_inference_steps=8,
    )  # fmt: skip


@pytest.mark.parametrize("strength", [None, 0.7, 1.0])
def test_inpainting_matches_diffusers(sdxl_inpaint, strength):
    kwargs = dict(prompt="a cat", image=an_image(), mask_image=a_mask(), num_inference_steps=8)
    if strength is not None:
        kwargs["strength"] = strength
    sdxl_inpaint.check(None, seed=5, **kwargs)


def test_nine_channel_inpainting_matches_diffusers(preset_build):
    pair = Pair(preset_build, "tiny-sdxl-inpaint", "StableDiffusionXLInpaintPipeline")
    pair.check("euler", seed=6, prompt="a cat", image=an_image(), mask_image=a_mask(),
               strength=0.8, num_inference_steps=8)  # fmt: skip


@pytest.fixture(scope="module")
def refiner(preset_build):
    return Pair(preset_build, "tiny-sdxl-refiner", "StableDiffusionXLImg2ImgPipeline")


def test_refiner_matches_diffusers(refiner):
    refiner.check(seed=8, prompt="a cat", image=an_image(), num_inference_steps=10)
    refiner.check(
        "dpmpp_2m", seed=9, prompt="a cat", negative_prompt="fog", image=an_image(), strength=0.5,
        aesthetic_score=7.0, negative_aesthetic_score=2.0, num_inference_steps=8,
    )  # fmt: skip


@pytest.mark.parametrize(("scheduler", "fraction"), [("euler", 0.8), ("heun", 0.7)])
def test_base_to_refiner_hand_off_matches_diffusers(sdxl, refiner, scheduler, fraction):
    """The ensemble of experts: the base model's latents from the first `fraction` of the
    schedule, finished by the refiner."""
    kwargs = dict(prompt="a lighthouse", num_inference_steps=10)
    handed = sdxl.pipe(**kwargs, scheduler=scheduler, seed=3, denoising_end=fraction,
                       output_type="latent")  # fmt: skip
    with using_scheduler(sdxl.reference, scheduler):
        expected_latents = sdxl.reference(
            **kwargs, denoising_end=fraction, output_type="latent",
            generator=torch.Generator("cpu").manual_seed(3),
        ).images.numpy()  # fmt: skip
    scale = float(np.abs(expected_latents).max())
    assert np.abs(handed.images - expected_latents).max() <= EXPORT_FP32_RELATIVE * scale
    assert len(handed.timings.unet) < 10 * SCHEDULERS[scheduler].cls.order
    finish = dict(kwargs, denoising_start=fraction)
    assert_same_image(
        refiner.expected(scheduler, 4, image=expected_latents, **finish),
        refiner.actual(scheduler, 4, image=handed.images, **finish),
    )


def test_hand_off_errors(sdxl, refiner):
    with pytest.raises(InputError, match="denoising_end must be"):
        sdxl.pipe("a cat", num_inference_steps=2, denoising_end=1.0)
    with pytest.raises(InputError, match="denoising_start continues"):
        refiner.pipe("a cat", num_inference_steps=2, denoising_start=0.5)
    with pytest.raises(InputError, match="inpainting takes an image, not latents"):
        refiner.pipe("a cat", image=_latents(1), mask_image=a_mask(), num_inference_steps=2)
    with pytest.raises(InputError, match="make 64x64 px images"):
        refiner.pipe("a cat", image=_latents(1), height=32, num_inference_steps=2)


def test_sdxl_turbo_matches_diffusers(preset_build):
    pair = Pair(preset_build, "tiny-sdxl-turbo", "StableDiffusionXLPipeline")
    for steps in (1, 4):
        pair.check(seed=steps, prompt="a cat", guidance_scale=0.0, num_inference_steps=steps)


def test_sdxl_only_arguments_are_refused_elsewhere(tiny_engine_dir):
    with Pipeline.load(tiny_engine_dir) as pipe, pytest.raises(InputError, match="for SDXL"):
        pipe("a cat", prompt_2="a dog", num_inference_steps=1)


def _xl_reference_conditioning(reference, chunks_of_pieces):
    """The web UI's SDXL conditioning re-derived: per encoder, chunks framed as <start> tokens
    <end> then the encoder's pad token, hidden_states[-2], weights applied and the mean of each
    chunk restored; chunks joined along the sequence, encoders side by side."""
    per_encoder = []
    for tokenizer, encoder in (
        (reference.tokenizer, reference.text_encoder),
        (reference.tokenizer_2, reference.text_encoder_2),
    ):
        parts = []
        for pieces in chunks_of_pieces:
            ids, weights = [], []
            for text, weight in pieces:
                for token in tokenizer(text, add_special_tokens=False).input_ids:
                    ids.append(token)
                    weights.append(weight)
            tokens = [tokenizer.bos_token_id, *ids, tokenizer.eos_token_id]
            tokens += [tokenizer.pad_token_id] * (77 - len(tokens))
            multipliers = torch.tensor([1.0, *weights] + [1.0] * (76 - len(ids)))
            with torch.no_grad():
                z = encoder(torch.tensor([tokens]), output_hidden_states=True).hidden_states[-2]
            mean = z.mean()
            z = z * multipliers[None, :, None]
            parts.append(z * (mean / z.mean()))
        per_encoder.append(torch.cat(parts, dim=1))
    return torch.cat(per_encoder, dim=-1).numpy()


def test_a1111_syntax_matches_the_web_ui_conditioning(sdxl):
    prompt = "a (castle:1.4) on a [hill] BREAK (((sunset)))"
    pieces = [[("a ", 1.0), ("castle", 1.4), (" on a ", 1.0), ("hill", 1 / 1.1)],
              [("sunset", 1.1**3)]]  # fmt: skip
    expected = _xl_reference_conditioning(sdxl.reference, pieces)
    request_inputs = sdxl.pipe.prompt_encoder.conditioners
    states = []
    for conditioner in request_inputs.values():
        chunks = conditioner.tokenize([prompt], "a1111")
        states.append(conditioner.encode(chunks, "a1111", None, 1)[0])
    ours = np.concatenate(states, axis=-1)
    assert ours.shape == expected.shape == (1, 154, 80)
    scale = float(np.abs(expected).max())
    assert np.abs(ours - expected).max() <= EXPORT_FP32_RELATIVE * scale
    image = sdxl.actual(prompt=prompt, prompt_syntax="a1111", num_inference_steps=2)
    assert image.shape == (1, 64, 64, 3)


def test_padding_mask_crop_matches_diffusers(sdxl_inpaint):
    image, mask = an_image(90, 120), a_mask(90, 120)
    kwargs = dict(prompt="a cat", image=image, mask_image=mask, num_inference_steps=6)
    kwargs.update(padding_mask_crop=16, strength=0.8)
    generator = torch.Generator("cpu").manual_seed(2)
    expected = sdxl_inpaint.reference(**kwargs, generator=generator).images[0]
    actual = sdxl_inpaint.pipe(**kwargs, seed=2).images[0]
    assert_same_image(np.asarray(expected) / 255.0, np.asarray(actual) / 255.0)
