"""`pipe.set_loras`: LoRAs applied to built engines without a rebuild (ONNX Runtime, OpenVINO)."""

from __future__ import annotations

import json
import shutil
import time

import numpy as np
import pytest
from helpers import assert_same_image
from lora_files import check_switches, check_switching, diffusers_image, lora_image, two_loras

from sdtrt.engine.options import BuildOptions
from sdtrt.engine.weights.lora import LoraSource
from sdtrt.errors import ArtifactError, InputError
from sdtrt.export.build import ExportOptions, build
from sdtrt.runtime.pipeline import Pipeline
from sdtrt.tolerances import END_TO_END_PSNR_DB


@pytest.fixture(scope="module")
def pipe(tiny_engine_dir):
    with Pipeline.load(tiny_engine_dir) as pipeline:
        yield pipeline


def test_a_b_a_gives_a_bit_for_bit_and_none_restores_the_build(pipe, lora_files):
    a = [LoraSource(path=lora_files["diffusers"], scale=0.7)]
    b = [(str(lora_files["kohya"]), 1.3)]  # the (path, scale) form is taken too
    check_switches(pipe, a, b)


def test_switched_equals_diffusers_and_a_merged_build(pipe, lora_files, tiny_model_dir, tmp_path):
    loras = [
        LoraSource(path=lora_files["diffusers"], scale=0.7),
        LoraSource(path=lora_files["kohya"], scale=1.3),
    ]
    ort = BuildOptions(backend="onnxruntime")  # as the engines switched below
    build(str(tiny_model_dir), tmp_path / "merged", ExportOptions(loras=tuple(loras)), ort)
    with Pipeline.load(tmp_path / "merged") as merged:
        merged_image = lora_image(merged)
    try:
        pipe.set_loras(loras)
        switched = lora_image(pipe)
    finally:
        pipe.set_loras([])
    assert_same_image(merged_image, switched)
    assert_same_image(diffusers_image(tiny_model_dir, loras), switched)


def test_switch_cost_is_measured(pipe, lora_files, record_property):
    started = time.perf_counter()
    pipe.set_loras([lora_files["kohya"]])
    seconds = time.perf_counter() - started
    pipe.set_loras([])
    record_property("lora_switch_seconds", seconds)
    assert pipe.loras == ()


def test_a_lora_for_another_model_is_refused_and_leaves_the_engines(pipe, tmp_path):
    from safetensors.numpy import save_file

    other = tmp_path / "sdxl.safetensors"
    # SDXL's layer under its SGM name: the tiny model has a layer of that name, not its size.
    layer = "lora_unet_input_blocks_4_1_proj_in"
    down, up = np.zeros((4, 640), dtype=np.float16), np.zeros((640, 4), dtype=np.float16)
    save_file({f"{layer}.lora_down.weight": down, f"{layer}.lora_up.weight": up}, str(other))
    engines = dict(pipe.engines)
    with pytest.raises(InputError, match="the LoRA was made for another model"):
        pipe.set_loras([other])
    assert pipe.engines == engines


def test_engines_without_a_weight_map_ask_for_a_rebuild(engine_copy, lora_files):
    (engine_copy / "unet" / "lora_weights.json").unlink()
    manifest = json.loads((engine_copy / "manifest.json").read_text())
    manifest["components"]["unet"]["files"].pop("unet/lora_weights.json")
    (engine_copy / "manifest.json").write_text(json.dumps(manifest))
    with Pipeline.load(engine_copy) as pipeline, pytest.raises(ArtifactError, match="rebuild"):
        pipeline.set_loras([lora_files["kohya"]])


def test_the_weight_map_covers_what_loras_touch(tiny_engine_dir):
    for component in ("unet", "text_encoder"):
        weights = json.loads((tiny_engine_dir / component / "lora_weights.json").read_text())
        mapped = [w for w in weights["weights"].values() if w["initializer"]]
        assert len(mapped) == len(weights["weights"]) > 20, component


def test_missing_lora_file_is_one_line(pipe, tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        pipe.set_loras([tmp_path / "nope.safetensors"])
    shutil.rmtree(tmp_path)


@pytest.mark.parametrize(
    "precision",
    ["fp32", pytest.param("int8", marks=pytest.mark.slow)],  # int8: NNCF's minute on two cores
)
def test_openvino_engines_switch_too(tiny_model_dir, lora_files, tmp_path, precision):
    """The default backend on CPUs with OpenVINO: compiled again with the new weights (int8
    engines: compressed again by NNCF, as the build did), and A -> B -> A, none -> A and
    merged-vs-switched behave as on ONNX Runtime (int8: the same weights but for float
    rounding before compression)."""
    pytest.importorskip("openvino")
    if precision == "int8":
        pytest.importorskip("nncf")
    a, b = two_loras(lora_files)
    options = BuildOptions(backend="openvino", precision=precision)
    build(str(tiny_model_dir), tmp_path / "plain", ExportOptions(), options)
    build(str(tiny_model_dir), tmp_path / "merged", ExportOptions(loras=tuple(a)), options)
    check_switching(tmp_path / "plain", tmp_path / "merged", a, b, END_TO_END_PSNR_DB)
