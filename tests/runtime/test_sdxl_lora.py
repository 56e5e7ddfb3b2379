"""LoRAs on SDXL, in both layouts (diffusers/PEFT `unet.`, `text_encoder.`, `text_encoder_2.`;
kohya `lora_te1_`, `lora_te2_` and the UNet's layers under SGM's names): merged at build and
switched at run time, each image diffusers' own with the LoRA fused."""

from pathlib import Path

import numpy as np
import pytest
from helpers import assert_same_image
from lora_files import (
    SDXL_WEIGHT_FILES,
    check_switches,
    diffusers_image,
    lora_image,
    write_diffusers_lora,
    write_kohya_lora,
)

from sdtrt.engine.options import BuildOptions, ExportOptions, Precision
from sdtrt.engine.weights.lora import LoraSource
from sdtrt.export.build import build
from sdtrt.runtime.pipeline import Pipeline

NETWORKS = ("text_encoder", "text_encoder_2", "unet", "vae_decoder")


@pytest.fixture(scope="module")
def model(preset_build) -> Path:
    return preset_build("tiny-sdxl")[0]


@pytest.fixture(scope="module")
def loras(model, tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("sdxl-loras")
    return {
        "diffusers": write_diffusers_lora(
            model, folder / "a.safetensors", 1, alpha=8.0, files=SDXL_WEIGHT_FILES
        ),
        "kohya": write_kohya_lora(model, folder / "b.safetensors", 2, sdxl=True),
    }


def _diffusers_image(model: Path, loras: list[LoraSource]) -> np.ndarray:
    return diffusers_image(model, loras, "StableDiffusionXLPipeline")


def test_switched_sdxl_loras_are_diffusers_images(preset_build, model, loras):
    a = [LoraSource(path=loras["diffusers"], scale=0.7)]
    b = [LoraSource(path=loras["kohya"], scale=1.3)]
    with Pipeline.load(preset_build("tiny-sdxl")[1]) as pipe:
        only_a, only_b = check_switches(pipe, a, b)  # A -> B -> A bit for bit, then none
    assert_same_image(_diffusers_image(model, a), only_a)
    assert_same_image(_diffusers_image(model, b), only_b)


def test_a_kohya_sdxl_lora_merged_at_build_is_diffusers_image(model, loras, tmp_path):
    both = (LoraSource(path=loras["kohya"], scale=0.8), LoraSource(path=loras["diffusers"]))
    options = ExportOptions(components=NETWORKS, loras=both)
    fp32 = BuildOptions(backend="onnxruntime", precision=Precision.FP32)
    build(str(model), tmp_path / "merged", options, fp32)
    with Pipeline.load(tmp_path / "merged") as pipe:
        actual = lora_image(pipe)
    assert_same_image(_diffusers_image(model, list(both)), actual)
