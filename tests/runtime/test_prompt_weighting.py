"""Long and weighted prompts (A1111 syntax) and clip skip on the tiny engines, against torch.

The A1111 reference here is written from the web UI's documented behaviour, independently of
sdtrt's parser and chunker: the prompt's weighted pieces are spelled out by hand, tokenized by
transformers' CLIPTokenizer, laid into chunks of 75, framed as <start> tokens <end> <end>...,
run through the torch text encoder, multiplied by the weights with the mean restored, joined.
"""

import json

import numpy as np
import pytest
import torch
from helpers import assert_same_image, psnr

from sdtrt.errors import InputError
from sdtrt.runtime.pipeline import Pipeline
from sdtrt.tolerances import END_TO_END_PSNR_DB, EXPORT_FP32_RELATIVE

BREAK = "BREAK"
WALLS = "with tall towers and stone walls " * 6
PROMPT = f"a (castle:1.4) on a [hill] {WALLS}BREAK (((sunset)))"
# PROMPT as the web UI's rules read it: (text, weight) pieces and a chunk break.
PROMPT_PIECES = [
    ("a ", 1.0),
    ("castle", 1.4),
    (" on a ", 1.0),
    ("hill", 1 / 1.1),
    (" " + WALLS.strip(), 1.0),
    BREAK,
    ("sunset", 1.1**3),
]
NEGATIVE = "blurry, (dark:0.7)"
NEGATIVE_PIECES = [("blurry, ", 1.0), ("dark", 0.7)]


@pytest.fixture(scope="module")
def pipe(tiny_engine_dir):
    with Pipeline.load(tiny_engine_dir) as pipeline:
        yield pipeline


def _latents(seed=0):
    return np.random.default_rng(seed).standard_normal((1, 4, 32, 32), dtype=np.float32)


def _reference_chunks(tokenizer, pieces):
    chunks, ids, weights = [], [], []
    for piece in pieces:
        if piece == BREAK:
            chunks.append((ids, weights))
            ids, weights = [], []
            continue
        text, weight = piece
        for token in tokenizer(text, add_special_tokens=False).input_ids:
            if len(ids) == 75:
                chunks.append((ids, weights))
                ids, weights = [], []
            ids.append(token)
            weights.append(weight)
    if ids or not chunks:
        chunks.append((ids, weights))
    return chunks


def _states(text_encoder, ids, clip_skip):
    with torch.no_grad():
        out = text_encoder(torch.tensor([ids]), output_hidden_states=True)
        if not clip_skip:
            return out.last_hidden_state
        norm = getattr(text_encoder, "text_model", text_encoder).final_layer_norm
        return norm(out.hidden_states[-(clip_skip + 1)])


def _reference_conditioning(diffusers_pipeline, pieces, chunk_count, clip_skip=None):
    tokenizer, encoder = diffusers_pipeline.tokenizer, diffusers_pipeline.text_encoder
    start, end = tokenizer.bos_token_id, tokenizer.eos_token_id
    chunks = _reference_chunks(tokenizer, pieces)
    chunks += [([], [])] * (chunk_count - len(chunks))  # the web UI's empty chunks
    parts = []
    for ids, weights in chunks:
        tokens = [start, *ids] + [end] * (76 - len(ids))
        multipliers = torch.tensor([[1.0, *weights] + [1.0] * (76 - len(ids))])
        z = _states(encoder, tokens, clip_skip)
        original_mean = z.mean()
        z = z * multipliers.reshape(multipliers.shape + (1,)).expand(z.shape)
        z = z * (original_mean / z.mean())
        parts.append(z)
    return torch.hstack(parts)


@pytest.mark.parametrize("clip_skip", [None, 1])
def test_conditioning_matches_the_web_ui_weighting(pipe, diffusers_pipeline, clip_skip):
    conditioner = pipe.prompt_encoder.conditioners["text_encoder"]
    chunks = conditioner.tokenize([NEGATIVE, PROMPT], "a1111")
    assert len(chunks) == 3  # two chunks of PROMPT's 75+ tokens, then the one after BREAK
    ours, _ = conditioner.encode(chunks, "a1111", clip_skip, prompts=1)
    expected = torch.cat(
        [
            _reference_conditioning(diffusers_pipeline, NEGATIVE_PIECES, 3, clip_skip),
            _reference_conditioning(diffusers_pipeline, PROMPT_PIECES, 3, clip_skip),
        ]
    ).numpy()
    assert ours.shape == expected.shape == (2, 3 * 77, 32)
    error = np.max(np.abs(ours - expected)) / np.max(np.abs(expected))
    assert error <= EXPORT_FP32_RELATIVE


def test_long_weighted_prompt_image_matches_diffusers_given_the_web_ui_conditioning(
    pipe, diffusers_pipeline
):
    latents = _latents()
    with torch.no_grad():
        expected = diffusers_pipeline(
            prompt_embeds=_reference_conditioning(diffusers_pipeline, PROMPT_PIECES, 3),
            negative_prompt_embeds=_reference_conditioning(diffusers_pipeline, NEGATIVE_PIECES, 3),
            latents=torch.from_numpy(latents),
            num_inference_steps=8,
            output_type="np",
        ).images
    actual = pipe(
        PROMPT,
        negative_prompt=NEGATIVE,
        prompt_syntax="a1111",
        latents=latents,
        num_inference_steps=8,
        output_type="np",
    ).images
    assert_same_image(expected, actual)


def test_plain_prompt_reads_the_same_in_both_syntaxes(pipe):
    kwargs = dict(
        negative_prompt="fog", latents=_latents(1), num_inference_steps=4, output_type="np"
    )
    plain = pipe("a red car on a road", **kwargs).images
    same = pipe("a red car on a road", prompt_syntax="a1111", **kwargs).images
    assert np.array_equal(plain, same)
    weighted = pipe("a (red:3) car on a (road:0.2)", prompt_syntax="a1111", **kwargs).images
    assert psnr(plain, weighted) < END_TO_END_PSNR_DB


def test_too_many_chunks_is_one_line_naming_the_build_option(pipe):
    with pytest.raises(InputError, match=r"needs 4 chunks .* rebuild with --max-prompt-chunks 4"):
        pipe("a BREAK b BREAK c BREAK d", prompt_syntax="a1111", num_inference_steps=1)
    with pytest.raises(InputError, match=r"unknown prompt syntax 'comfy'"):
        pipe("a cat", prompt_syntax="comfy", num_inference_steps=1)


def _diffusers_clip_skip(diffusers_pipeline, prompt, clip_skip, **kwargs):
    """diffusers' clip_skip image. diffusers 0.42 reaches for `text_encoder.text_model`, which
    transformers 5 removed; there its prompt embeddings are made as its encode_prompt makes them
    (hidden_states[-(clip_skip + 1)] through the final layer norm) and passed in."""
    try:
        return diffusers_pipeline(prompt, clip_skip=clip_skip, **kwargs).images
    except AttributeError as error:
        if "text_model" not in str(error):
            raise
    ids = diffusers_pipeline.tokenizer(
        prompt, padding="max_length", max_length=77, truncation=True
    ).input_ids
    embeds = _states(diffusers_pipeline.text_encoder, ids, clip_skip)
    return diffusers_pipeline(prompt_embeds=embeds, **kwargs).images


@pytest.mark.parametrize("clip_skip", [1, 2])
def test_clip_skip_matches_diffusers(pipe, diffusers_pipeline, clip_skip):
    latents = _latents(2)
    kwargs = dict(num_inference_steps=8, output_type="np")
    with torch.no_grad():
        expected = _diffusers_clip_skip(
            diffusers_pipeline, "a photo of an astronaut", clip_skip,
            latents=torch.from_numpy(latents), **kwargs,
        )  # fmt: skip
    actual = pipe("a photo of an astronaut", clip_skip=clip_skip, latents=latents, **kwargs)
    assert_same_image(expected, actual.images)
    unskipped = pipe("a photo of an astronaut", latents=latents, **kwargs).images
    assert psnr(unskipped, actual.images) < END_TO_END_PSNR_DB


def test_clip_skip_outside_the_layers_is_one_line(pipe):
    with pytest.raises(InputError, match=r"clip skip must be 0 to 5 .*got 6"):
        pipe("a cat", clip_skip=6, num_inference_steps=1)
    with pytest.raises(InputError, match=r"clip skip must be a whole number"):
        pipe("a cat", clip_skip=-1, num_inference_steps=1)


def test_engines_from_before_chunks_and_clip_skip_still_run(engine_copy):
    """A manifest as earlier builds wrote it: a fixed 77-token UNet, no layer outputs."""
    path = engine_copy / "manifest.json"
    manifest = json.loads(path.read_text())
    text_io = manifest["components"]["text_encoder"]["io"]
    text_io["outputs"] = [o for o in text_io["outputs"] if o["name"] == "last_hidden_state"]
    unet_io = manifest["components"]["unet"]["io"]
    for spec in unet_io["inputs"]:
        if spec["name"] == "encoder_hidden_states":
            spec["shape"][1] = 77
    profile = unet_io["profile"]["encoder_hidden_states"]
    for which in ("min", "opt", "max"):
        profile[which][1] = 77
    del manifest["ranges"]["max_prompt_chunks"]
    path.write_text(json.dumps(manifest))
    with Pipeline.load(engine_copy) as old:
        assert old("a cat", num_inference_steps=2, output_type="np").images.shape == (1, 64, 64, 3)
        short = old("a (cat:1.2)", prompt_syntax="a1111", num_inference_steps=2, output_type="np")
        assert short.images.shape == (1, 64, 64, 3)
        with pytest.raises(InputError, match=r"needs 2 chunks .* more than the 1 these engines"):
            old("a BREAK cat", prompt_syntax="a1111", num_inference_steps=2)
        with pytest.raises(InputError, match=r"rebuild them .* to use --clip-skip"):
            old("a cat", clip_skip=1, num_inference_steps=2)
