"""`sdtrt build --lora`: merged engines against diffusers' load_lora_weights + fuse_lora."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers import assert_same_image, psnr
from lora_files import PROMPT, diffusers_image, prompt_latents

from sdtrt.engine.options import BuildOptions
from sdtrt.engine.weights.lora import LoraSource
from sdtrt.export.build import ExportOptions, build
from sdtrt.runtime.pipeline import Pipeline
from sdtrt.tolerances import END_TO_END_PSNR_DB

ORT = BuildOptions(backend="onnxruntime")


def sdtrt_image(engines: Path) -> np.ndarray:
    with Pipeline.load(engines) as pipe:
        return pipe(**PROMPT, latents=prompt_latents(), output_type="np").images


@pytest.fixture(scope="session")
def merged_engines(tiny_model_dir, lora_files, tmp_path_factory) -> tuple[Path, list[LoraSource]]:
    """Engines built with both LoRAs merged, the diffusers one at 0.7, the kohya one at 1.3."""
    loras = [
        LoraSource(path=lora_files["diffusers"], scale=0.7),
        LoraSource(path=lora_files["kohya"], scale=1.3),
    ]
    output = tmp_path_factory.mktemp("lora-engines") / "merged"
    build(str(tiny_model_dir), output, ExportOptions(loras=tuple(loras)), ORT)
    return output, loras


def test_merged_build_matches_diffusers_fuse_lora(merged_engines, tiny_model_dir):
    engines, loras = merged_engines
    expected = diffusers_image(tiny_model_dir, loras)
    actual = sdtrt_image(engines)
    assert_same_image(expected, actual)
    # The LoRAs matter: without them the image is another one.
    assert psnr(diffusers_image(tiny_model_dir, []), actual) < END_TO_END_PSNR_DB - 20


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["diffusers", "kohya"])
def test_each_layout_alone_matches_diffusers(tiny_model_dir, lora_files, tmp_path, layout):
    loras = [LoraSource(path=lora_files[layout], scale=0.8)]
    build(str(tiny_model_dir), tmp_path / "engines", ExportOptions(loras=tuple(loras)), ORT)
    assert_same_image(diffusers_image(tiny_model_dir, loras), sdtrt_image(tmp_path / "engines"))


def test_manifest_records_the_loras_and_a_new_lora_rebuilds(merged_engines, lora_files, tmp_path):
    import shutil

    engines, loras = merged_engines
    copy = tmp_path / "engines"
    shutil.copytree(engines, copy)
    stages: list[tuple[str, str]] = []
    options = ExportOptions(loras=(LoraSource(path=lora_files["kohya"], scale=0.5),))
    manifest = build(
        manifest_source(copy), copy, options, ORT, progress=lambda c, s: stages.append((c, s))
    )
    assert [lora.scale for lora in manifest.export_options.loras] == [0.5]
    assert ("vae_decoder", "reused") in stages
    assert ("unet", "done") in stages and ("text_encoder", "done") in stages


def manifest_source(engines: Path) -> str:
    from sdtrt.engine.manifest import read_manifest

    return read_manifest(engines).source.ref
