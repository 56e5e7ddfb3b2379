"""`sdtrt build --precision fp16 --fp16-guard` on the tiny model made to overflow fp16: the build
succeeds, the manifest names the fp32 islands, and the image matches the fp32 build's."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from helpers import psnr
from typer.testing import CliRunner

from sdtrt.cli import app
from sdtrt.debug.compare import compare
from sdtrt.engine.manifest import read_manifest
from sdtrt.engine.options import BuildOptions, Precision
from sdtrt.export.build import ExportOptions, build
from sdtrt.runtime.pipeline import Pipeline
from sdtrt.tolerances import REDUCED_PRECISION_PSNR_DB

GUARDED = BuildOptions(backend="onnxruntime", precision=Precision.FP16, fp16_guard=True)
VAE_CONV = "/decoder/up_blocks.0/resnets.0/conv2/Conv"
UNET_VALUES = "/inner/down_blocks.1/attentions.0/transformer_blocks.0/attn1/to_v/MatMul"


def test_guarded_vae_decoder_records_its_islands(overflow_model_dir: Path, tmp_path: Path) -> None:
    output = tmp_path / "engines"
    build(str(overflow_model_dir), output, ExportOptions(components=("vae_decoder",)), GUARDED)
    record = read_manifest(output).components["vae_decoder"]
    # Searched instead of fp32 whole: fp16, with the overflowing up-block kept in fp32.
    assert record.precision is Precision.FP16
    islands = {island.node: island for island in record.fp32_islands}
    assert "overflow" in islands[VAE_CONV].reason
    graph = onnx.load(str(output / record.onnx)).graph
    kept = [n for n in graph.node if n.name == VAE_CONV]
    assert kept and not any(name.endswith("_as_fp16") for name in kept[0].input)
    assert record.reference_onnx is not None and (output / record.reference_onnx).is_file()

    shown = CliRunner().invoke(app, ["info", str(output)], catch_exceptions=False)
    assert shown.exit_code == 0
    assert "fp32 islands in vae_decoder" in shown.stdout and VAE_CONV in shown.stdout

    # The fp32 graph kept beside the engine is what `sdtrt debug compare` checks it against.
    (comparison,) = compare(output, "a red car")
    assert comparison.reference == record.reference_onnx
    assert not comparison.diverges and not comparison.first_diverging, comparison


@pytest.mark.slow
def test_guarded_fp16_image_matches_fp32(overflow_model_dir: Path, tmp_path: Path) -> None:
    fp32_dir, fp16_dir = tmp_path / "fp32", tmp_path / "fp16"
    build(str(overflow_model_dir), fp32_dir, build_options=BuildOptions(backend="onnxruntime"))
    build(str(overflow_model_dir), fp16_dir, build_options=GUARDED)
    records = read_manifest(fp16_dir).components
    assert UNET_VALUES in {island.node for island in records["unet"].fp32_islands}
    assert VAE_CONV in {island.node for island in records["vae_decoder"].fp32_islands}
    images = []
    for folder in (fp32_dir, fp16_dir):
        with Pipeline.load(folder) as pipe:
            result = pipe("a red car", num_inference_steps=8, seed=3, output_type="np")
            images.append(np.asarray(result.images))
    assert np.isfinite(images[1]).all()
    value = psnr(images[0], images[1])
    assert value >= REDUCED_PRECISION_PSNR_DB, f"{value:.1f} dB"


def test_guard_without_fp16_is_refused(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["build", "tiny", "--output", str(tmp_path / "e"), "--fp16-guard"]
    )
    assert result.exit_code == 1
    said = result.stderr.strip()
    assert said.startswith("error: --fp16-guard checks fp16 graphs; add --precision fp16 ("), said
    assert "\n" not in said and not (tmp_path / "e").exists()
    result = CliRunner().invoke(
        app, ["build", "tiny", "-o", str(tmp_path / "e"), "--precision", "fp32", "--fp16-guard"]
    )
    assert result.exit_code == 1 and result.stderr.strip() == (
        "error: --fp16-guard checks fp16 graphs; add --precision fp16 (got fp32)"
    )
