"""A tiny VAE (AutoencoderTiny) built beside the model's own: images decoded and encoded with it
match diffusers' pipelines holding the same AutoencoderTiny (`pipe.vae = ...`), and what it
cannot be used with is refused in one line."""

import json

import diffusers
import numpy as np
import pytest
import torch
from helpers import assert_same_image, psnr, sdtrt
from PIL import Image

from sdtrt.engine.options import BuildOptions, ExportOptions, Precision
from sdtrt.errors import InputError, ModelSourceError
from sdtrt.export.build import build
from sdtrt.runtime.pipeline import Pipeline
from sdtrt.tolerances import END_TO_END_PSNR_DB

NETWORKS = ("text_encoder", "unet", "vae_decoder", "vae_encoder")
FP32_ON_ONNXRUNTIME = BuildOptions(backend="onnxruntime", precision=Precision.FP32)


@pytest.fixture(scope="module")
def tiny_vae_dir(tmp_path_factory):
    from sdtrt.export.presets import write_preset

    folder = tmp_path_factory.mktemp("models") / "tiny-taesd"
    write_preset("tiny-taesd", folder)
    return folder


@pytest.fixture(scope="module")
def engines(tiny_model_dir, tiny_vae_dir, tmp_path_factory):
    output = tmp_path_factory.mktemp("engines") / "tiny-with-taesd"
    options = ExportOptions(components=NETWORKS, tiny_vae=str(tiny_vae_dir))
    build(str(tiny_model_dir), output, options, FP32_ON_ONNXRUNTIME)
    return output


@pytest.fixture(scope="module")
def pipe(engines):
    with Pipeline.load(engines) as pipeline:
        yield pipeline


def _reference(cls, model_dir, vae_dir):
    reference = cls.from_pretrained(model_dir)
    reference.vae = diffusers.AutoencoderTiny.from_pretrained(vae_dir)
    reference.set_progress_bar_config(disable=True)
    return reference


def _picture(size=64):
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    pixels = np.stack([x / size, y / size, 0.5 + 0.5 * np.sin(x / 5 + y / 7)], axis=-1)
    return Image.fromarray((pixels * 255).round().astype(np.uint8))


def test_the_build_records_the_tiny_vae(engines):
    manifest = json.loads((engines / "manifest.json").read_text())
    assert {"tiny_vae_decoder", "tiny_vae_encoder"} <= set(manifest["components"])
    assert manifest["model"]["tiny_vae"]["scaling_factor"] == 1.0
    for name in ("tiny_vae_decoder", "tiny_vae_encoder"):
        [check] = manifest["components"][name]["validation"]
        assert check["relative_error"] <= 5e-4


@pytest.mark.parametrize("guidance", [7.5, 1.0])
def test_text_to_image_with_the_tiny_vae_is_diffusers_image(
    pipe, tiny_model_dir, tiny_vae_dir, guidance
):
    reference = _reference(diffusers.StableDiffusionPipeline, tiny_model_dir, tiny_vae_dir)
    arguments = dict(prompt="a red fox in the snow", num_inference_steps=6, guidance_scale=guidance)
    expected = reference(
        **arguments, generator=torch.Generator("cpu").manual_seed(3), output_type="np"
    ).images
    tiny = pipe(**arguments, seed=3, output_type="np", vae="tiny").images
    assert_same_image(expected, tiny)
    full = pipe(**arguments, seed=3, output_type="np").images
    assert psnr(full, tiny) < END_TO_END_PSNR_DB  # the other VAE did decode it


@pytest.mark.parametrize(
    ("cls", "extra"),
    [
        (diffusers.StableDiffusionImg2ImgPipeline, {"strength": 0.6}),
        (diffusers.StableDiffusionInpaintPipeline, {"strength": 0.8, "mask": True}),
    ],
)
def test_images_encoded_by_the_tiny_vae_are_diffusers_images(
    pipe, tiny_model_dir, tiny_vae_dir, cls, extra
):
    """Its encoder gives latents, not a distribution: nothing is drawn for it, so the noise
    that follows is drawn as diffusers draws it."""
    reference = _reference(cls, tiny_model_dir, tiny_vae_dir)
    image = _picture()
    task = {"image": image, "strength": extra["strength"]}
    if extra.get("mask"):
        mask = np.zeros((64, 64), np.uint8)
        mask[16:48, 20:52] = 255
        task["mask_image"] = Image.fromarray(mask)
    arguments = dict(prompt="a watercolor lighthouse", num_inference_steps=8)
    expected = reference(
        **arguments, **task, generator=torch.Generator("cpu").manual_seed(5), output_type="np"
    ).images
    actual = pipe(**arguments, **task, seed=5, output_type="np", vae="tiny").images
    assert_same_image(expected, actual)


def test_the_tiny_vae_is_refused_where_it_does_not_fit(tiny_model_dir, tmp_path, tiny_engine_dir):
    with Pipeline.load(tiny_engine_dir) as plain:
        with pytest.raises(InputError, match="no tiny VAE; build one beside the model's"):
            plain("a fox", num_inference_steps=1, vae="tiny")
        with pytest.raises(InputError, match="unknown VAE 'small'; choose one of: full, tiny"):
            plain("a fox", num_inference_steps=1, vae="small")
    wider = tmp_path / "sd3-taesd"
    diffusers.AutoencoderTiny(
        latent_channels=16,
        encoder_block_out_channels=(8, 8),
        decoder_block_out_channels=(8, 8),
        num_encoder_blocks=(1, 1),
        num_decoder_blocks=(1, 1),
    ).save_pretrained(wider)
    networks = ExportOptions(components=("vae_decoder",), tiny_vae=str(wider))
    with pytest.raises(InputError, match="takes 16-channel latents at 1/2 of the image; this"):
        build(str(tiny_model_dir), tmp_path / "e", networks, FP32_ON_ONNXRUNTIME)
    eightfold = networks.model_copy(update={"tiny_vae": "taesd"})  # TAESD: latents at 1/8
    with pytest.raises(InputError, match="4-channel latents at 1/8 of the image; this model's"):
        build(str(tiny_model_dir), tmp_path / "e", eightfold, FP32_ON_ONNXRUNTIME)
    not_tiny = networks.model_copy(update={"tiny_vae": str(tiny_model_dir / "vae")})
    with pytest.raises(ModelSourceError, match="holds AutoencoderKL, not AutoencoderTiny"):
        build(str(tiny_model_dir), tmp_path / "e", not_tiny, FP32_ON_ONNXRUNTIME)
    assert not (tmp_path / "e").exists()


def test_run_with_the_tiny_vae_says_so_in_the_png(engines, tmp_path):
    output = tmp_path / "fox.png"
    result = sdtrt("run", engines, "a fox", "--steps", 2, "--vae", "tiny", "-o", output)
    assert result.exit_code == 0, result.stderr
    assert "VAE: tiny" in Image.open(output).text["parameters"]


def test_the_server_decodes_with_the_tiny_vae_when_asked(engines, pipe):
    from serving import decode_png, live_server

    body = {"prompt": "a fox", "steps": 3, "seed": 6, "vae": "tiny"}
    with live_server(engines) as server, server.client() as client:
        answer = client.post("/v1/txt2img", json=body)
        unknown = client.post("/v1/txt2img", json={**body, "vae": "taesd"})
    assert answer.status_code == 200, answer.text
    expected = pipe("a fox", num_inference_steps=3, seed=6, vae="tiny").images[0]
    image = decode_png(answer.json()["images"][0]).convert("RGB")
    assert np.array_equal(np.asarray(image), np.asarray(expected))
    assert "VAE: tiny" in answer.json()["parameters"][0]
    assert unknown.status_code == 422 and "vae: Input should be 'full' or 'tiny'" in unknown.text


def test_sdxl_with_a_tiny_vae_is_diffusers_image(tiny_vae_dir, tmp_path):
    from sdtrt.export.presets import write_preset

    model = tmp_path / "tiny-sdxl"
    write_preset("tiny-sdxl", model)
    networks = ("text_encoder", "text_encoder_2", "unet", "vae_decoder")
    options = ExportOptions(components=networks, tiny_vae=str(tiny_vae_dir))
    build(str(model), tmp_path / "e", options, FP32_ON_ONNXRUNTIME)
    reference = _reference(diffusers.StableDiffusionXLPipeline, model, tiny_vae_dir)
    arguments = dict(prompt="a fox", num_inference_steps=5)
    generator = torch.Generator("cpu").manual_seed(2)
    expected = reference(**arguments, generator=generator, output_type="np").images
    with Pipeline.load(tmp_path / "e") as pipe:
        actual = pipe(**arguments, seed=2, output_type="np", vae="tiny").images
    assert expected.std() > 0.01  # a picture, not a flat field that any decoder matches
    assert_same_image(expected, actual)


def test_a_tiny_vae_added_to_built_engines_reuses_them(engine_copy, tiny_model_dir, tiny_vae_dir):
    stages: dict[str, list[str]] = {}
    options = ExportOptions(components=NETWORKS, tiny_vae=str(tiny_vae_dir))
    build(str(tiny_model_dir), engine_copy, options, FP32_ON_ONNXRUNTIME,
          lambda component, stage: stages.setdefault(component, []).append(stage))  # fmt: skip
    assert all(stages[name] == ["reused"] for name in NETWORKS), stages
    assert stages["tiny_vae_decoder"][-1] == "done"
