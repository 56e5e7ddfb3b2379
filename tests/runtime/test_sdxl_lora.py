"""LoRAs on SDXL, in both layouts (diffusers/PEFT `unet.`, `text_encoder.`, `text_encoder_2.`;
kohya `lora_te1_`, `lora_te2_` and the UNet's layers under SGM's names): merged at build and
switched at run time, each image diffusers' own with the LoRA fused."""

from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import assert_same_image
from lora_files import SDXL_WEIGHT_FILES, check_switches, write_diffusers_lora, write_kohya_lora

from sdtrt.engine.options import BuildOptions, ExportOptions, Precision
from sdtrt.engine.weights.lora import LoraSource
from sdtrt.export.build import build
from sdtrt.runtime.pipeline import Pipeline

ARGUMENTS = dict(prompt="a photo of an astronaut", negative_prompt="blurry", num_inference_steps=6)
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
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline.from_pretrained(model)
    pipe.set_progress_bar_config(disable=True)
    names = [f"lora{i}" for i in range(len(loras))]
    for name, lora in zip(names, loras, strict=True):
        pipe.load_lora_weights(str(lora.path), adapter_name=name)
    pipe.set_adapters(names, adapter_weights=[lora.scale for lora in loras])
    pipe.fuse_lora(adapter_names=names)
    generator = torch.Generator("cpu").manual_seed(3)
    return pipe(**ARGUMENTS, generator=generator, output_type="np").images


def _image(pipe: Pipeline) -> np.ndarray:
    return pipe(**ARGUMENTS, seed=3, output_type="np").images


def test_switched_sdxl_loras_are_diffusers_images(preset_build, model, loras):
    a = [LoraSource(path=loras["diffusers"], scale=0.7)]
    b = [LoraSource(path=loras["kohya"], scale=1.3)]
    with Pipeline.load(preset_build("tiny-sdxl")[1]) as pipe:
        check_switches(pipe, a, b)  # A -> B -> A bit for bit, and back to no LoRA
        try:
            pipe.set_loras(a)
            only_a = _image(pipe)
            pipe.set_loras(b)
            only_b = _image(pipe)
        finally:
            pipe.set_loras([])
    assert_same_image(_diffusers_image(model, a), only_a)
    assert_same_image(_diffusers_image(model, b), only_b)


def test_a_kohya_sdxl_lora_merged_at_build_is_diffusers_image(model, loras, tmp_path):
    both = (LoraSource(path=loras["kohya"], scale=0.8), LoraSource(path=loras["diffusers"]))
    options = ExportOptions(components=NETWORKS, loras=both)
    fp32 = BuildOptions(backend="onnxruntime", precision=Precision.FP32)
    build(str(model), tmp_path / "merged", options, fp32)
    with Pipeline.load(tmp_path / "merged") as pipe:
        actual = _image(pipe)
    assert_same_image(_diffusers_image(model, list(both)), actual)
