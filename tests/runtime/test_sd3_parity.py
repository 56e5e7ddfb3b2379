"""SD 3 on the tiny SD 3 preset against diffusers' own SD 3 pipelines: text to image (guided and
not, negative prompts, each encoder's own prompt, T5 left out, several prompts and images,
non-square sizes, T5's length), image to image and inpainting. Same latents or seeds must give
the same images."""

import numpy as np
import pytest
import torch
from helpers import assert_same_image
from reference_pair import Pair, a_mask, an_image

from sdtrt.engine.options import BuildOptions
from sdtrt.errors import InputError
from sdtrt.export.build import ExportOptions, build


def _latents(batch, height=64, width=64, seed=0):
    return np.random.default_rng(seed).standard_normal(
        (batch, 16, height // 2, width // 2), dtype=np.float32
    )


@pytest.fixture(scope="module")
def sd3(preset_build):
    return Pair(preset_build, "tiny-sd3", "StableDiffusion3Pipeline")


TEXT_CASES = {
    # Steps and guidance left to diffusers' defaults (28 steps at 7.0).
    "defaults": dict(prompt="a photo of an astronaut riding a horse"),
    "negative": dict(prompt="a castle", negative_prompt="blurry, dark", num_inference_steps=6),
    "unguided": dict(prompt="a bowl of fruit", guidance_scale=1.0, num_inference_steps=6),
    "own_prompts": dict(
        prompt="a cat",
        prompt_2="an oil painting",
        prompt_3="a cat sitting on a red sofa in the morning light",
        negative_prompt="fog",
        negative_prompt_2="noise",
        negative_prompt_3="a dark and blurry photograph",
        guidance_scale=5.0,
        num_inference_steps=6,
    ),
    "two_prompts_two_images": dict(
        prompt=["a cat", "a dog on the beach"], num_images_per_prompt=2, num_inference_steps=5
    ),
    "non_square": dict(prompt="a red car", height=48, width=96, num_inference_steps=6),
    "clip_skip": dict(
        prompt="a lighthouse", negative_prompt="rain", clip_skip=1, num_inference_steps=6
    ),
    "short_t5": dict(prompt="a tree by a lake", max_sequence_length=77, num_inference_steps=6),
    # SD 3.5 Medium's recommended setting at the default strength, start and stop (calls 1 to 3
    # of 20), and every layer skipped over the whole schedule.
    "skip_layers": dict(prompt="a fox", skip_guidance_layers=[0], num_inference_steps=20),
    "skip_all_layers": dict(
        prompt="a fox",
        skip_guidance_layers=[0, 1],
        skip_layer_guidance_scale=1.5,
        skip_layer_guidance_start=0.0,
        skip_layer_guidance_stop=1.0,
        num_inference_steps=6,
    ),
    "long_t5": dict(
        prompt="a tree by a lake, " * 40, max_sequence_length=512, num_inference_steps=4
    ),
}


@pytest.mark.parametrize("case", TEXT_CASES)
def test_text_to_image_matches_diffusers(sd3, case):
    kwargs = dict(TEXT_CASES[case])
    prompts = kwargs["prompt"] if isinstance(kwargs["prompt"], list) else [kwargs["prompt"]]
    batch = len(prompts) * kwargs.get("num_images_per_prompt", 1)
    kwargs["latents"] = _latents(batch, kwargs.get("height", 64), kwargs.get("width", 64))
    sd3.check(**kwargs)


def test_seed_alone_matches_diffusers(sd3):
    sd3.check(seed=77, prompt=["a cat", "a ship"], num_inference_steps=5)


def test_heun_matches_diffusers(sd3):
    sd3.check("flow_heun", prompt="a lighthouse", num_inference_steps=5, latents=_latents(1))


def test_skipping_layers_changes_the_image(sd3):
    plain = sd3.actual(prompt="a fox", num_inference_steps=6)
    skipped = sd3.actual(prompt="a fox", num_inference_steps=6, skip_guidance_layers=[0],
                         skip_layer_guidance_stop=1.0)  # fmt: skip
    assert not np.allclose(plain, skipped, atol=1e-3)


@pytest.fixture(scope="module")
def without_t5(preset_build, tmp_path_factory):
    """The tiny SD 3 model built with T5 left out on purpose, beside diffusers without it."""
    folder, _ = preset_build("tiny-sd3")
    engines = tmp_path_factory.mktemp("engines") / "no-t5"
    components = ("text_encoder", "text_encoder_2", "transformer", "vae_decoder")
    build(
        str(folder),
        engines,
        ExportOptions(components=components),
        BuildOptions(backend="onnxruntime"),
    )
    return Pair.from_folders(
        folder, engines, "StableDiffusion3Pipeline", text_encoder_3=None, tokenizer_3=None
    )


def test_without_t5_matches_diffusers(without_t5):
    assert "text_encoder_3" not in without_t5.pipe.engines
    without_t5.check(
        prompt="a fox", negative_prompt="snow", num_inference_steps=6, latents=_latents(1)
    )
    without_t5.check(prompt="a fox", max_sequence_length=100, num_inference_steps=4, seed=2)


@pytest.mark.parametrize("strength", [None, 0.75])
def test_image_to_image_matches_diffusers(preset_build, strength):
    pair = Pair(preset_build, "tiny-sd3", "StableDiffusion3Img2ImgPipeline")
    kwargs = dict(prompt="a cat", image=an_image(), num_inference_steps=10)
    if strength is not None:
        kwargs["strength"] = strength  # 10 x 0.75 keeps 7.5 steps: SD 3 rounds after subtracting
    pair.check(seed=3, **kwargs)
    pair.check(
        seed=4, prompt=["a cat", "a dog"], negative_prompt="blur", image=an_image(48, 80),
        height=48, width=80, num_images_per_prompt=2, num_inference_steps=7,
    )  # fmt: skip


def _decoded_with_shift(pair, latents):
    """diffusers' SD 3 inpainting decodes without the VAE's shift factor, unlike its other SD 3
    pipelines and its own encoding (diffusers issue 13611): its latents are decoded here as the
    text-to-image pipeline decodes them."""
    vae = pair.reference.vae
    with torch.no_grad():
        image = vae.decode(latents / vae.config.scaling_factor + vae.config.shift_factor)[0]
    return pair.reference.image_processor.postprocess(image, output_type="np")


def test_skip_layer_guidance_is_for_text_to_image(sd3):
    with pytest.raises(InputError, match="skip-layer guidance is for text to image"):
        sd3.actual(
            prompt="a cat", image=an_image(), skip_guidance_layers=[0], num_inference_steps=4
        )


@pytest.mark.parametrize("strength", [None, 1.0])
def test_inpainting_matches_diffusers(preset_build, strength):
    pair = Pair(preset_build, "tiny-sd3", "StableDiffusion3InpaintPipeline")
    kwargs = dict(prompt="a cat", image=an_image(), mask_image=a_mask(), num_inference_steps=8)
    if strength is not None:
        kwargs["strength"] = strength
    generator = torch.Generator("cpu").manual_seed(5)
    latents = pair.reference(**kwargs, generator=generator, output_type="latent").images
    assert_same_image(_decoded_with_shift(pair, latents), pair.actual(seed=5, **kwargs))


def test_sd3_arguments_are_checked(sd3, tiny_engine_dir):
    with pytest.raises(InputError, match="flow-matching schedulers: flow_euler"):
        sd3.actual(prompt="a cat", scheduler="euler_a", num_inference_steps=2)
    with pytest.raises(
        InputError, match="max_sequence_length must be a whole number from 1 to 512"
    ):
        sd3.actual(prompt="a cat", max_sequence_length=513, num_inference_steps=2)
    with pytest.raises(InputError, match="A1111 prompt syntax: for SD 1.x, 2.x and SDXL models"):
        sd3.actual(prompt="a cat", prompt_syntax="a1111", num_inference_steps=2)
    with pytest.raises(InputError, match="the size and aesthetic conditioning: for SDXL"):
        sd3.actual(prompt="a cat", original_size=(64, 64), num_inference_steps=2)
    with pytest.raises(InputError, match="must be a positive multiple of 4"):
        sd3.actual(prompt="a cat", height=62, num_inference_steps=2)
    with pytest.raises(InputError, match="must name layers 0 to 1 of this transformer, got"):
        sd3.actual(prompt="a cat", skip_guidance_layers=[2], num_inference_steps=2)
    with pytest.raises(InputError, match="skip_guidance_layers must be a list of layer numbers"):
        sd3.actual(prompt="a cat", skip_guidance_layers=1, num_inference_steps=2)
    from sdtrt.runtime.pipeline import Pipeline

    with Pipeline.load(tiny_engine_dir) as sd:
        with pytest.raises(InputError, match="prompt_3 and max_sequence_length: for SD 3 models"):
            sd("a cat", prompt_3="x", max_sequence_length=10, num_inference_steps=1)
        with pytest.raises(InputError, match="does not sample this stable-diffusion model"):
            sd("a cat", scheduler="flow_euler", num_inference_steps=1)
        with pytest.raises(InputError, match="skip_guidance_layers: for SD 3 models"):
            sd("a cat", skip_guidance_layers=[1], num_inference_steps=1)


def test_turbo_samples_in_four_steps_without_guidance(preset_build):
    """A model whose name says turbo defaults to its model card's 4 unguided steps."""
    pair = Pair(preset_build, "tiny-sd3-turbo", "StableDiffusion3Pipeline")
    result = pair.pipe("a fox", seed=9, output_type="np")
    assert (result.request.steps, result.request.guidance_scale) == (4, 0.0)
    assert_same_image(pair.expected(seed=9, prompt="a fox", num_inference_steps=4,
                                    guidance_scale=0.0), result.images)  # fmt: skip
