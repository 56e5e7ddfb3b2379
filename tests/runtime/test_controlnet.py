"""ControlNets built beside a model: images match diffusers' ControlNet pipelines from the same
seed (one and two ControlNets, scales, guidance start and end, guess mode, guidance off; text to
image, image to image, inpainting; SDXL), a call without a hint is the plain model's image, and
what does not fit is refused in one line."""

import json
from pathlib import Path

import diffusers
import numpy as np
import pytest
import torch
from helpers import assert_one_line_error, assert_same_image, psnr, sdtrt
from PIL import Image

from sdtrt.engine.options import BuildOptions, ExportOptions, Precision
from sdtrt.errors import InputError, ModelSourceError
from sdtrt.export.build import build
from sdtrt.export.presets import write_preset
from sdtrt.runtime.pipeline import Pipeline
from sdtrt.tolerances import EXPORT_FP32_RELATIVE

NETWORKS = ("text_encoder", "unet", "vae_decoder", "vae_encoder")
FP32_ON_ONNXRUNTIME = BuildOptions(backend="onnxruntime", precision=Precision.FP32)
NAMES = ("tiny-controlnet", "tiny-controlnet-2")  # as the tiny_controlnet_engine_dir has them


@pytest.fixture(scope="module")
def pipe(tiny_controlnet_engine_dir):
    with Pipeline.load(tiny_controlnet_engine_dir) as pipeline:
        yield pipeline


def _hints():
    y, x = np.mgrid[0:64, 0:64]
    grid = np.stack([x % 16 < 3, y % 16 < 3, (x + y) % 20 < 2], axis=-1)
    blocks = np.stack([x < 32, y < 32, x > 40], axis=-1)
    return [Image.fromarray((h * 255).astype(np.uint8)) for h in (grid, blocks)]


def _picture():
    y, x = np.mgrid[0:64, 0:64].astype(np.float32)
    pixels = np.stack([x / 64, y / 64, 0.5 + 0.5 * np.sin(x / 5 + y / 7)], axis=-1)
    return Image.fromarray((pixels * 255).round().astype(np.uint8))


def _mask():
    mask = np.zeros((64, 64), np.uint8)
    mask[16:48, 20:52] = 255
    return Image.fromarray(mask)


def _reference(cls, model_dir, tiny_controlnet_dirs, names):
    nets = [diffusers.ControlNetModel.from_pretrained(tiny_controlnet_dirs[n]) for n in names]
    reference = cls.from_pretrained(
        model_dir,
        controlnet=nets[0] if len(nets) == 1 else nets,
        safety_checker=None,
        requires_safety_checker=False,
    )
    reference.set_progress_bar_config(disable=True)
    return reference


def test_the_build_records_the_controlnets(tiny_controlnet_engine_dir):
    manifest = json.loads((tiny_controlnet_engine_dir / "manifest.json").read_text())
    assert [c["name"] for c in manifest["model"]["controlnets"]] == list(NAMES)
    for name in NAMES:
        record = manifest["components"][f"controlnet/{name}"]
        assert record["onnx"] == f"controlnet/{name}/model.onnx"
        checks = record["validation"]
        assert checks and all(c["relative_error"] <= EXPORT_FP32_RELATIVE for c in checks)
    unet_inputs = [t["name"] for t in manifest["components"]["unet"]["io"]["inputs"]]
    assert "mid_residual" in unet_inputs and "down_residual_0" in unet_inputs


CASES = {
    "one": ({"controlnet": ["tiny-controlnet"]}, {}),
    "unguided": ({"controlnet": ["tiny-controlnet"]}, {"guidance_scale": 1.0}),
    "guess mode": (
        {"controlnet": ["tiny-controlnet"]},
        {"guess_mode": True, "controlnet_conditioning_scale": 0.7},
    ),
    "guess mode unguided": (
        {"controlnet": ["tiny-controlnet"]},
        {"guess_mode": True, "guidance_scale": 1.0},
    ),
    "two": (
        {"controlnet": list(NAMES)},
        {
            "controlnet_conditioning_scale": [0.5, 1.2],
            "control_guidance_start": [0.0, 0.3],
            "control_guidance_end": [0.6, 1.0],
        },
    ),
}


@pytest.mark.parametrize("case", CASES)
def test_text_to_image_is_diffusers_controlnet_image(
    pipe, tiny_model_dir, tiny_controlnet_dirs, case
):
    ours, shared = CASES[case]
    names = ours["controlnet"]
    reference = _reference(
        diffusers.StableDiffusionControlNetPipeline, tiny_model_dir, tiny_controlnet_dirs, names
    )
    hints = _hints()[: len(names)]
    arguments = dict(prompt="a red fox in the snow", num_inference_steps=6, **shared)
    expected = reference(
        **arguments,
        image=hints[0] if len(hints) == 1 else hints,
        generator=torch.Generator("cpu").manual_seed(1),
        output_type="np",
    ).images
    actual = pipe(**arguments, **ours, control_image=hints, seed=1, output_type="np").images
    assert_same_image(expected, actual)
    plain = pipe(prompt=arguments["prompt"], num_inference_steps=6, seed=1, output_type="np")
    assert psnr(plain.images, actual) < 40  # the hint did change the image


def test_a_call_without_a_hint_is_the_plain_models_image(pipe, diffusers_pipeline):
    """The UNet built to take residuals is fed zeros: diffusers' plain pipeline's image."""
    arguments = dict(prompt="a lighthouse at dusk", num_inference_steps=5)
    expected = diffusers_pipeline(
        **arguments, generator=torch.Generator("cpu").manual_seed(4), output_type="np"
    ).images
    assert_same_image(expected, pipe(**arguments, seed=4, output_type="np").images)


@pytest.mark.parametrize("task", ["img2img", "inpaint"])
def test_images_with_a_controlnet_are_diffusers_images(
    pipe, tiny_model_dir, tiny_controlnet_dirs, task
):
    cls = {
        "img2img": diffusers.StableDiffusionControlNetImg2ImgPipeline,
        "inpaint": diffusers.StableDiffusionControlNetInpaintPipeline,
    }[task]
    reference = _reference(cls, tiny_model_dir, tiny_controlnet_dirs, ["tiny-controlnet"])
    given = {"image": _picture(), "strength": 0.7}
    if task == "inpaint":
        given["mask_image"] = _mask()
    hint = _hints()[0]
    arguments = dict(prompt="a watercolor lighthouse", num_inference_steps=8, **given)
    expected = reference(
        **arguments,
        control_image=hint,
        generator=torch.Generator("cpu").manual_seed(5),
        output_type="np",
    ).images
    actual = pipe(**arguments, control_image=hint, controlnet="tiny-controlnet", seed=5,
                  output_type="np").images  # fmt: skip
    assert_same_image(expected, actual)


def test_the_size_follows_the_hint(pipe):
    hint = _hints()[0].resize((48, 80))
    image = pipe("a fox", num_inference_steps=1, control_image=[hint, hint], output_type="np")
    assert image.images.shape == (1, 80, 48, 3)


def test_what_does_not_fit_is_refused(pipe, tiny_engine_dir):
    hint = _hints()[0]
    with pytest.raises(InputError, match="no ControlNet 'canny' was built here; built: tiny-c"):
        pipe("a fox", num_inference_steps=1, control_image=hint, controlnet="canny")
    with pytest.raises(InputError, match="1 control images for 2 ControlNets"):
        pipe("a fox", num_inference_steps=1, control_image=hint)
    with pytest.raises(InputError, match="0 <= start < end <= 1; got 0.5 to 0.5"):
        pipe("a fox", num_inference_steps=1, control_image=[hint, hint],
             control_guidance_start=0.5, control_guidance_end=0.5)  # fmt: skip
    with pytest.raises(InputError, match="guess_mode applies to ControlNets: give control_im"):
        pipe("a fox", num_inference_steps=1, guess_mode=True)
    with pytest.raises(InputError, match="controlnet_conditioning_scale has 3 values for 2"):
        pipe("a fox", num_inference_steps=1, control_image=[hint, hint],
             controlnet_conditioning_scale=[1, 1, 1])  # fmt: skip
    with Pipeline.load(tiny_engine_dir) as plain:
        with pytest.raises(InputError, match="these engines have no ControlNet; rebuild"):
            plain("a fox", num_inference_steps=1, control_image=hint)


def test_a_controlnet_for_another_model_is_refused_before_anything_is_built(
    tiny_model_dir, tiny_controlnet_dirs, tmp_path
):
    other = tmp_path / "sdxl-net"
    write_preset("tiny-sdxl-controlnet", other)
    options = ExportOptions(components=NETWORKS, controlnets=(str(other),))
    with pytest.raises(InputError, match="'sdxl-net' was made for another model"):
        build(str(tiny_model_dir), tmp_path / "e", options, FP32_ON_ONNXRUNTIME)
    twice = (str(tiny_controlnet_dirs[NAMES[0]]), NAMES[0])  # a folder and a preset of one name
    with pytest.raises(InputError, match="two ControlNets would both be named 'tiny-controlne"):
        build(str(tiny_model_dir), tmp_path / "e",
              options.model_copy(update={"controlnets": twice}), FP32_ON_ONNXRUNTIME)  # fmt: skip
    not_one = options.model_copy(update={"controlnets": (str(tiny_model_dir / "vae"),)})
    with pytest.raises(ModelSourceError, match="holds AutoencoderKL, not a ControlNetModel"):
        build(str(tiny_model_dir), tmp_path / "e", not_one, FP32_ON_ONNXRUNTIME)
    without_unet = options.model_copy(
        update={"components": ("text_encoder",), "controlnets": (NAMES[0],)}
    )
    with pytest.raises(InputError, match="add unet to --components"):
        build(str(tiny_model_dir), tmp_path / "e", without_unet, FP32_ON_ONNXRUNTIME)
    assert not (tmp_path / "e").exists()


def test_one_more_controlnet_builds_only_that_network(
    tiny_controlnet_engine_dir, tiny_model_dir, tmp_path
):
    import shutil

    copy = tmp_path / "engines"
    shutil.copytree(tiny_controlnet_engine_dir, copy)
    stages: dict[str, list[str]] = {}
    options = ExportOptions(components=NETWORKS, controlnets=NAMES)  # the presets, same files
    build(str(tiny_model_dir), copy, options, FP32_ON_ONNXRUNTIME,
          lambda component, stage: stages.setdefault(component, []).append(stage))  # fmt: skip
    assert all(stages[name] == ["reused"] for name in (*NETWORKS, f"controlnet/{NAMES[0]}"))
    fewer = options.model_copy(update={"controlnets": NAMES[:1]})
    build(str(tiny_model_dir), copy, fewer, FP32_ON_ONNXRUNTIME)
    assert sorted(p.name for p in (copy / "controlnet").iterdir()) == [NAMES[0]]


def test_run_with_a_control_image(tiny_controlnet_engine_dir, tmp_path):
    engines = tiny_controlnet_engine_dir
    hint = tmp_path / "edges.png"
    _hints()[0].save(hint)
    output = tmp_path / "fox.png"
    result = sdtrt("run", engines, "a fox", "--steps", 2, "-o", output,
                   "--control", f"tiny-controlnet={hint}:0.8", "--control-end", 0.5)  # fmt: skip
    assert result.exit_code == 0, result.stderr
    written = Image.open(output)
    assert written.size == (64, 64)
    assert (
        'ControlNet 0: "Model: tiny-controlnet, Weight: 0.8, Guidance Start: 0.0, Guidance End: 0.5'
        in written.text["parameters"]
    )
    assert "controlnets x " in result.stdout
    bad = sdtrt("run", engines, "a fox", "--control", str(hint))
    assert_one_line_error(bad, "--control takes [canny:]NAME=HINT.png[:SCALE]")
    missing = sdtrt("run", engines, "a fox", "--control", "tiny-controlnet=nowhere.png")
    assert_one_line_error(missing, "control image file nowhere.png does not exist")


def test_sdxl_with_a_controlnet_is_diffusers_image(tmp_path):
    """Text to image, image to image at the defaults of SDXL's ControlNet pipeline (strength
    0.8 and scale 0.8, where SDXL's own image-to-image pipeline has strength 0.3), and
    inpainting."""
    model, net = tmp_path / "tiny-sdxl", tmp_path / "tiny-sdxl-controlnet"
    write_preset("tiny-sdxl", model)
    write_preset("tiny-sdxl-controlnet", net)
    networks = ("text_encoder", "text_encoder_2", "unet", "vae_decoder", "vae_encoder")
    options = ExportOptions(components=networks, controlnets=(str(net),))
    build(str(model), tmp_path / "e", options, FP32_ON_ONNXRUNTIME)
    controlnet = diffusers.ControlNetModel.from_pretrained(net)
    hint = _hints()[1]
    cases = [
        (diffusers.StableDiffusionXLControlNetPipeline, {"controlnet_conditioning_scale": 0.8}),
        (diffusers.StableDiffusionXLControlNetImg2ImgPipeline, {"image": _picture()}),
        (
            diffusers.StableDiffusionXLControlNetInpaintPipeline,
            {"image": _picture(), "mask_image": _mask(), "strength": 0.7},
        ),
    ]
    for cls, task in cases:
        reference = cls.from_pretrained(model, controlnet=controlnet)
        reference.set_progress_bar_config(disable=True)
        generator = torch.Generator("cpu").manual_seed(2)
        hinted = {"image": hint} if "image" not in task else {"control_image": hint}
        expected = reference("a fox", num_inference_steps=5, generator=generator,
                             output_type="np", **task, **hinted).images  # fmt: skip
        with Pipeline.load(tmp_path / "e") as pipe:
            actual = pipe("a fox", num_inference_steps=5, seed=2, output_type="np",
                          control_image=hint, **task).images  # fmt: skip
        assert expected.std() > 0.01  # a picture, not a flat field that anything matches
        assert_same_image(expected, actual)


def test_bench_measures_the_controlnet_per_step(tiny_controlnet_engine_dir, tmp_path):
    report = tmp_path / "bench.json"
    common = ("bench", tiny_controlnet_engine_dir, "--steps", 2, "--runs", 1, "--warmup", 0)
    result = sdtrt(*common, "--controlnet", "tiny-controlnet", "--json", report)
    assert result.exit_code == 0, result.stderr
    stages = json.loads(report.read_text())["stages"]
    assert stages["controlnet_step"]["samples"] == stages["unet_step"]["samples"]
    assert "controlnet tiny-controlnet, per call" in result.stdout
    plain = sdtrt(*common, "--json", report)
    assert (
        plain.exit_code == 0 and "controlnet_step" not in json.loads(report.read_text())["stages"]
    )
    unknown = sdtrt(*common, "--controlnet", "depth")
    assert_one_line_error(unknown, "no ControlNet 'depth' was built here")


def test_the_compare_bench_feeds_a_controlnet_ready_unet(pipe):
    """`bench --compare` times the UNet alone: zero residuals where it takes them."""
    from sdtrt.bench.compare import _unet_feeds

    feeds = _unet_feeds(pipe, 64, 64, 1)
    assert feeds["mid_residual"].shape[0] == 2 and not feeds["mid_residual"].any()
    assert pipe.engines["unet"].infer(feeds)["noise_pred"].shape == (2, 4, 32, 32)


def test_a_scale_left_out_on_the_command_line_is_the_tasks_default():
    from sdtrt.cli.generate import parse_control_arg

    assert parse_control_arg("canny=edges.png").scale is None
    windows = parse_control_arg("canny=C:/edges.png:0.5")
    assert windows == ("canny", Path("C:/edges.png"), 0.5, "none")
    edges = parse_control_arg("canny:edges=photo.png")
    assert edges == ("edges", Path("photo.png"), None, "canny")


def test_run_makes_a_canny_hint_from_a_photo(tiny_controlnet_engine_dir, pipe, tmp_path):
    from sdtrt.runtime.hint_preprocessors import canny

    photo = Image.fromarray((np.random.default_rng(3).random((96, 80, 3)) * 255).astype(np.uint8))
    photo.save(tmp_path / "photo.png")
    output = tmp_path / "fox.png"
    result = sdtrt("run", tiny_controlnet_engine_dir, "a fox", "--steps", 2, "--seed", 4,
                   "--width", 64, "--height", 64, "-o", output,
                   "--control", f"canny:tiny-controlnet={tmp_path / 'photo.png'}",
                   "--canny-thresholds", 60, 180)  # fmt: skip
    assert result.exit_code == 0, result.stderr
    expected = pipe("a fox", num_inference_steps=2, seed=4, width=64, height=64,
                    controlnet="tiny-controlnet", control_image=canny(photo, 60, 180))  # fmt: skip
    written = np.asarray(Image.open(output).convert("RGB"))
    np.testing.assert_array_equal(written, np.asarray(expected.images[0]))
    unknown = sdtrt("run", tiny_controlnet_engine_dir, "a fox", "--control",
                    f"depth:tiny-controlnet={tmp_path / 'photo.png'}")  # fmt: skip
    assert_one_line_error(unknown, "unknown hint preprocessor 'depth'")
