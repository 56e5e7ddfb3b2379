"""`sdtrt build model.safetensors`: single-file checkpoints, detected and converted offline."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from checkpoint_files import write_single_file
from helpers import assert_same_image
from safetensors.numpy import save_file
from typer.testing import CliRunner

from sdtrt.cli import app
from sdtrt.engine.options import BuildOptions
from sdtrt.errors import ModelSourceError
from sdtrt.export.build import build
from sdtrt.export.presets import SDXL
from sdtrt.export.single_file import (
    SD2,
    SDXL_CLIP_TOKENS,
    SDXL_OPEN_CLIP_TOKENS,
    UNET_IN,
    detect_architecture,
)
from sdtrt.runtime.pipeline import Pipeline

KWARGS = dict(prompt="a photo of an astronaut", negative_prompt="fog", num_inference_steps=6)


@pytest.fixture(scope="module")
def tiny_single_file(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("single")
    return write_single_file(tiny_model_dir, folder / "tiny-model.safetensors")


def _latents() -> np.ndarray:
    return np.random.default_rng(5).standard_normal((1, 4, 32, 32), dtype=np.float32)


def _image(engines: Path) -> np.ndarray:
    with Pipeline.load(engines) as pipe:
        return pipe(**KWARGS, latents=_latents(), output_type="np").images


def test_single_file_builds_the_images_of_the_diffusers_folder(
    tiny_single_file, tiny_engine_dir, diffusers_pipeline, tmp_path, monkeypatch
):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the configs ship with sdtrt
    ort = BuildOptions(backend="onnxruntime")  # as tiny_engine_dir
    manifest = build(str(tiny_single_file), tmp_path / "engines", build_options=ort)
    assert manifest.source.kind == "file" and manifest.model.name == "tiny-model"
    image = _image(tmp_path / "engines")
    reference = diffusers_pipeline(**KWARGS, latents=torch.from_numpy(_latents()), output_type="np")
    assert_same_image(reference.images, image)
    assert_same_image(_image(tiny_engine_dir), image)


@pytest.mark.parametrize(
    ("preset", "reference_class"),
    [
        # SD 2.x's conversion: ~40 s on two cores, beside SD 1.x's by default
        pytest.param("tiny-v", "StableDiffusionPipeline", marks=pytest.mark.slow),
        ("tiny-sdxl", "StableDiffusionXLPipeline"),
    ],
)
def test_sd2_and_sdxl_single_files_build_the_images_of_their_folders(
    preset_build, preset, reference_class, tmp_path, monkeypatch
):
    """SD 2.x (OpenCLIP, v-prediction) and SDXL (two encoders) files, written from the tiny
    lookalikes, build offline into engines that make the folders' images."""
    import diffusers

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder, folder_engines = preset_build(preset)
    checkpoint = write_single_file(folder, tmp_path / f"{preset}.safetensors")
    assert detect_architecture(checkpoint).name == preset
    ort = BuildOptions(backend="onnxruntime")
    manifest = build(str(checkpoint), tmp_path / "engines", build_options=ort)
    family = "stable-diffusion-xl" if "xl" in preset else "stable-diffusion"
    assert manifest.model.family == family
    reference = getattr(diffusers, reference_class).from_pretrained(folder)
    reference.set_progress_bar_config(disable=True)
    expected = reference(**KWARGS, latents=torch.from_numpy(_latents()), output_type="np").images
    assert_same_image(expected, _image(tmp_path / "engines"))
    assert_same_image(_image(folder_engines), _image(tmp_path / "engines"))


def _header_only(path: Path, shapes: dict[str, tuple[int, ...]]) -> Path:
    save_file({name: np.zeros(shape, dtype=np.float16) for name, shape in shapes.items()}, path)
    return path


def test_sd2_is_told_from_its_open_clip_text_encoder(tmp_path):
    path = _header_only(
        tmp_path / "v2.safetensors",
        {UNET_IN: (320, 4, 3, 3), "cond_stage_model.model.token_embedding.weight": (8, 1024)},
    )
    assert detect_architecture(path) is SD2


def test_sdxl_is_told_from_its_two_text_encoders(tmp_path):
    path = _header_only(
        tmp_path / "xl.safetensors",
        {UNET_IN: (320, 4, 3, 3), SDXL_CLIP_TOKENS: (8, 768), SDXL_OPEN_CLIP_TOKENS: (8, 1280)},
    )
    assert detect_architecture(path) is SDXL


@pytest.mark.parametrize(
    ("shapes", "message"),
    [
        (
            {"conditioner.embedders.0.model.x": (1,), UNET_IN: (384, 4, 3, 3)},
            "SDXL checkpoint without both text encoders",
        ),
        ({"some.other.model.weight": (4, 4)}, "not a Stable Diffusion checkpoint"),
        ({UNET_IN: (320, 4, 3, 3)}, "no text encoder"),
        (
            {UNET_IN: (96, 4, 3, 3),
             "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight": (8, 48)},
            "unknown size",
        ),
    ],
)  # fmt: skip
def test_unrecognised_checkpoints_are_refused(tmp_path, shapes, message):
    with pytest.raises(ModelSourceError, match=message):
        detect_architecture(_header_only(tmp_path / "model.safetensors", shapes))


def test_pickle_needs_allow_pickle(tiny_model_dir, tiny_single_file, tmp_path):
    from safetensors.torch import load_file

    checkpoint = tmp_path / "tiny.ckpt"
    torch.save({"state_dict": load_file(str(tiny_single_file))}, checkpoint)
    result = CliRunner().invoke(app, ["build", str(checkpoint), "-o", str(tmp_path / "out")])
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "--allow-pickle" in lines[0] and "arbitrary code" in lines[0]
    assert not (tmp_path / "out").exists()
    assert detect_architecture(checkpoint, allow_pickle=True).name == "tiny"
