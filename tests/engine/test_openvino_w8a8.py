"""w8a8 on OpenVINO: the UNet's weights and activations in int8, calibrated on real runs; the
other networks in the CPU's float precision; its image still diffusers' image."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
from helpers import diffusers_images, psnr, sdtrt_image

from sdtrt.engine.backends import resolve_build
from sdtrt.engine.host import cpu_flags
from sdtrt.engine.manifest import read_manifest
from sdtrt.engine.openvino.cpu import float_precision, inference_hint
from sdtrt.engine.openvino.devices import OpenVinoGpuBackend
from sdtrt.engine.openvino.engine import compile_with_weights
from sdtrt.engine.options import BuildOptions, Precision
from sdtrt.errors import BackendUnavailable, InputError
from sdtrt.export.build import ExportOptions, build
from sdtrt.export.precision import component_precision
from sdtrt.runtime.pipeline import Pipeline
from sdtrt.tolerances import EXPORT_TOLERANCE, REDUCED_PRECISION_PSNR_DB

pytest.importorskip("openvino")
pytest.importorskip("nncf")

NETWORKS = ExportOptions(components=("text_encoder", "unet", "vae_decoder"))


def test_w8a8_computes_the_rest_in_the_cpus_float_precision():
    bf16_cpu, avx2_cpu = {"avx512f", "avx512_bf16"}, {"avx2", "fma"}
    assert float_precision(bf16_cpu) is Precision.BF16
    assert float_precision(avx2_cpu) is Precision.FP32
    assert inference_hint(Precision.W8A8, bf16_cpu) == "bf16"
    assert inference_hint(Precision.W8A8, avx2_cpu) == "f32"
    assert inference_hint(Precision.INT8, bf16_cpu) == "f32"  # int8 weights: fp32 compute
    for rest in (Precision.BF16, Precision.FP32):
        assert component_precision("unet", Precision.W8A8, float_precision=rest) is Precision.W8A8
        assert component_precision("text_encoder", Precision.W8A8, float_precision=rest) is rest
        assert component_precision("vae_decoder", Precision.W8A8, float_precision=rest) is (
            Precision.FP32
        )
        assert component_precision("vae_decoder", Precision.W8A8, True, rest) is rest


def test_quantized_builds_without_nncf_are_refused_up_front(monkeypatch):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name: None if name == "nncf" else find_spec(name)
    )
    for precision in (Precision.INT8, Precision.W8A8):
        with pytest.raises(BackendUnavailable, match="needs NNCF; run `pip install nncf`"):
            resolve_build(BuildOptions(backend="openvino", precision=precision))


def test_w8a8_is_refused_where_it_is_not_built():
    with pytest.raises(InputError, match="--precision w8a8 is for --backend openvino"):
        resolve_build(BuildOptions(backend="onnxruntime", precision=Precision.W8A8))
    with pytest.raises(InputError, match="not w8a8; use --precision fp16"):
        OpenVinoGpuBackend().check_precision(Precision.W8A8)


@pytest.fixture(scope="module")
def w8a8_dir(tiny_model_dir, tmp_path_factory):
    output = tmp_path_factory.mktemp("openvino") / "w8a8"
    options = BuildOptions(backend="openvino", precision=Precision.W8A8)
    build(str(tiny_model_dir), output, NETWORKS, options)
    return output


def test_the_unet_is_int8_and_the_rest_float(w8a8_dir):
    manifest = read_manifest(w8a8_dir)
    rest = float_precision(cpu_flags())
    precisions = {name: r.precision for name, r in manifest.components.items()}
    assert precisions == {
        "text_encoder": rest, "unet": Precision.W8A8, "vae_decoder": rest,
    }  # fmt: skip
    unet = manifest.components["unet"]
    assert unet.settings["weights"] == unet.settings["activations"] == "int8"
    assert unet.settings["inference_precision"] == inference_hint(Precision.W8A8, cpu_flags())
    # Validated on a call from a held-out run: rounded, not exact.
    error = unet.validation[0].relative_error
    assert EXPORT_TOLERANCE[Precision.FP32] < error <= EXPORT_TOLERANCE[Precision.W8A8]


def test_an_unchanged_w8a8_unet_is_reused_without_calibrating(w8a8_dir, tiny_model_dir):
    seen: dict[str, list[str]] = {}
    options = BuildOptions(backend="openvino", precision=Precision.W8A8)
    build(str(tiny_model_dir), w8a8_dir, NETWORKS, options,
          lambda component, stage: seen.setdefault(component, []).append(stage))  # fmt: skip
    assert seen == {name: ["reused"] for name in NETWORKS.components}


def _convolution_precisions(engine) -> set[str]:
    """What the compiled model's convolutions run in."""
    imported = engine._static or engine._main_model()
    model = imported.compiled.get_runtime_model()
    infos = [op.get_rt_info() for op in model.get_ops()]
    return {
        info["runtimePrecision"].astype(str)
        for info in infos
        if info["layerType"].astype(str) == "Convolution"
    }


def test_the_compiled_unet_computes_in_int8(w8a8_dir):
    """The convolutions' activations are int8: int8 weights alone leave them in float."""
    with Pipeline.load(w8a8_dir) as pipe:
        assert _convolution_precisions(pipe.engines["unet"]) <= {"i8", "u8"}
        assert not _convolution_precisions(pipe.engines["vae_decoder"]) & {"i8", "u8"}


@pytest.mark.parametrize("scheduler", ["pndm", "euler", "dpmpp_2m"])
def test_w8a8_image_is_still_diffusers_image(w8a8_dir, diffusers_pipeline, scheduler):
    expected = diffusers_images(diffusers_pipeline, (scheduler,))[scheduler]
    assert psnr(expected, sdtrt_image(w8a8_dir, scheduler)) >= REDUCED_PRECISION_PSNR_DB


@pytest.mark.slow  # calibrates and quantizes tiny SDXL: ~2 min on two cores (SD 1.x: default)
def test_sdxl_calibrates_on_its_own_pipeline(preset_build, tmp_path):
    """SDXL's UNet also takes pooled text and time ids: recorded from diffusers' SDXL runs."""
    import diffusers
    import torch

    folder, _ = preset_build("tiny-sdxl")
    options = BuildOptions(backend="openvino", precision=Precision.W8A8)
    networks = ExportOptions(components=("text_encoder", "text_encoder_2", "unet", "vae_decoder"))
    manifest = build(str(folder), tmp_path / "sdxl", networks, options)
    assert manifest.components["unet"].settings["activations"] == "int8"
    reference = diffusers.StableDiffusionXLPipeline.from_pretrained(folder)
    reference.set_progress_bar_config(disable=True)
    size = manifest.model.native_size[0] // manifest.model.vae_scale_factor
    latents = np.random.default_rng(1).standard_normal((1, 4, size, size), dtype=np.float32)
    prompt = dict(prompt="a photo of an astronaut", num_inference_steps=8)
    expected = reference(**prompt, latents=torch.from_numpy(latents), output_type="np").images
    with Pipeline.load(tmp_path / "sdxl") as pipe:
        image = pipe(**prompt, latents=latents, output_type="np").images
    assert psnr(expected, image) >= REDUCED_PRECISION_PSNR_DB


def test_lora_switching_refuses_calibrated_activations(w8a8_dir):
    record = read_manifest(w8a8_dir).components["unet"]
    with pytest.raises(InputError, match="merge LoRAs into a w8a8 build with `sdtrt build --lora`"):
        compile_with_weights(w8a8_dir / record.onnx, record.io, record.settings, {})


@pytest.mark.skipif(importlib.util.find_spec("diffusers") is None, reason="needs diffusers")
def test_an_inpainting_model_is_refused_before_anything_is_written(
    tiny_inpaint_model_dir, tmp_path
):
    folder = tiny_inpaint_model_dir
    options = BuildOptions(backend="openvino", precision=Precision.W8A8)
    with pytest.raises(InputError, match="w8a8 calibrates on text-to-image runs"):
        build(str(folder), tmp_path / "out", NETWORKS, options)
    assert not (tmp_path / "out").exists()


@pytest.mark.slow  # calibrates and quantizes tiny SD 3: ~1.5 min on two cores
def test_sd3_calibrates_its_transformer_on_its_own_pipeline(preset_build, tmp_path):
    """SD 3's transformer, recorded from diffusers' SD 3 runs (pooled prompts, all layers)."""
    import diffusers
    import torch

    folder, _ = preset_build("tiny-sd3")
    options = BuildOptions(backend="openvino", precision=Precision.W8A8)
    networks = ExportOptions(
        components=(
            "text_encoder",
            "text_encoder_2",
            "text_encoder_3",
            "transformer",
            "vae_decoder",
        )
    )
    manifest = build(str(folder), tmp_path / "sd3", networks, options)
    assert manifest.components["transformer"].settings["activations"] == "int8"
    reference = diffusers.StableDiffusion3Pipeline.from_pretrained(folder)
    reference.set_progress_bar_config(disable=True)
    latents = np.random.default_rng(1).standard_normal((1, 16, 32, 32), dtype=np.float32)
    prompt = dict(prompt="a photo of an astronaut", num_inference_steps=8)
    expected = reference(**prompt, latents=torch.from_numpy(latents), output_type="np").images
    with Pipeline.load(tmp_path / "sd3") as pipe:
        image = pipe(**prompt, latents=latents, output_type="np").images
    assert psnr(expected, image) >= REDUCED_PRECISION_PSNR_DB
