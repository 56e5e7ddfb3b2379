"""Token-exact parity with the model's own tokenizer on CLIP's real vocabulary, both padding
styles, and images that follow from it."""

import dataclasses

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline
from helpers import assert_same_image, psnr
from prompt_corpus import corpus
from transformers import CLIPTokenizer

from sdtrt.engine.options import BuildOptions, Precision
from sdtrt.export.build import build
from sdtrt.export.clip_vocab import END, real_clip_merges
from sdtrt.export.presets import TINY, write_model
from sdtrt.runtime.pipeline import Pipeline
from sdtrt.runtime.tokenizer import PromptTokenizer
from sdtrt.tolerances import END_TO_END_PSNR_DB

PADDING = {"sd1": END, "sd2": "!"}  # SD 2.x pads with "!", id 0
FP32 = Precision.FP32  # images held to fp32's bound


@pytest.fixture(scope="session", params=sorted(PADDING))
def real_vocab_model(request, tmp_path_factory):
    """The tiny architecture with CLIP's real 49,408-token vocabulary; built engines beside it."""
    preset = dataclasses.replace(
        TINY,
        name=f"tiny-clip-{request.param}",
        merges=real_clip_merges,
        pad_token=PADDING[request.param],
    )
    root = tmp_path_factory.mktemp(preset.name)
    write_model(preset, root / "model")
    build(str(root / "model"), root / "engines", build_options=BuildOptions(precision=FP32))
    return request.param, root / "model", root / "engines"


def test_corpus_is_broad():
    assert len(corpus()) >= 200


def test_ids_match_the_model_tokenizer(real_vocab_model):
    padding, model, engines = real_vocab_model
    reference = CLIPTokenizer.from_pretrained(model / "tokenizer")
    assert len(reference) == 49408
    ours = PromptTokenizer(engines / "tokenizer" / "tokenizer.json")
    prompts = corpus()
    expected = reference(prompts, padding="max_length", max_length=77, truncation=True).input_ids
    actual = ours(prompts)
    mismatched = [p for p, e, a in zip(prompts, expected, actual, strict=True) if list(a) != e]
    assert not mismatched, mismatched[:5]
    pad_id = reference.convert_tokens_to_ids(PADDING[padding])
    assert actual[0, -1] == pad_id and (pad_id == 0) == (padding == "sd2")


PROMPTS = [
    "a photo of an astronaut riding a horse on mars",
    "東京の夜景、ネオン、雨 🐱✨",
    "(masterpiece:1.2), café crème, 1920x1080, it's\tdone",
]


@pytest.mark.parametrize("prompt", PROMPTS)
def test_images_match_diffusers(real_vocab_model, prompt):
    _, model, engines = real_vocab_model
    reference = StableDiffusionPipeline.from_pretrained(model)
    reference.set_progress_bar_config(disable=True)
    latents = np.random.default_rng(3).standard_normal((1, 4, 32, 32), dtype=np.float32)
    kwargs = dict(prompt=prompt, negative_prompt="blurry", num_inference_steps=8)
    expected = reference(**kwargs, latents=torch.from_numpy(latents), output_type="np").images
    with Pipeline.load(engines) as pipe:
        actual = pipe(**kwargs, latents=latents, output_type="np").images
    assert_same_image(expected, actual)


def test_one_token_moves_the_image(real_vocab_model):
    """The 60 dB bar would catch a single wrong token id."""
    _, _, engines = real_vocab_model
    latents = np.random.default_rng(3).standard_normal((1, 4, 32, 32), dtype=np.float32)
    with Pipeline.load(engines) as pipe:
        cat, dog = (
            pipe(
                f"a photo of a {animal}", num_inference_steps=8, latents=latents, output_type="np"
            ).images
            for animal in ("cat", "dog")
        )
    assert psnr(cat, dog) < END_TO_END_PSNR_DB
