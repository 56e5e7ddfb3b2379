"""OpenVINO on an Intel GPU or NPU: the refusals everywhere, and parity where OpenVINO sees the
device (skipped elsewhere)."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import LATENTS, PROMPT, assert_same_image, diffusers_images, psnr, sdtrt_image

from sdtrt.engine import backends
from sdtrt.engine.backends import load_component, resolve_build
from sdtrt.engine.manifest import read_manifest
from sdtrt.engine.openvino.devices import OpenVinoGpuBackend, OpenVinoNpuBackend
from sdtrt.engine.openvino.engine import shared_core
from sdtrt.engine.options import BuildOptions, Precision
from sdtrt.errors import BackendUnavailable, InputError
from sdtrt.export.build import ExportOptions, build
from sdtrt.runtime.pipeline import Pipeline
from sdtrt.tolerances import REDUCED_PRECISION_PSNR_DB

pytest.importorskip("openvino")

NETWORKS = ExportOptions(components=("text_encoder", "unet", "vae_decoder"))


def _sees(device: str) -> bool:
    return device in shared_core().available_devices


@pytest.fixture(scope="module")
def euler_reference(diffusers_pipeline):
    return diffusers_images(diffusers_pipeline, ("euler",))["euler"]


def test_openvino_gpu_refusals_are_one_line(tiny_model_dir, tmp_path):
    """Without a GPU OpenVINO sees, the build says so and writes nothing; bf16 and w8a8 are
    refused on the GPU plugin whatever the machine."""
    gpu = OpenVinoGpuBackend()
    for precision in (Precision.BF16, Precision.W8A8):
        with pytest.raises(InputError, match=f"not {precision.value}; use --precision fp16"):
            gpu.check_precision(precision)
    gpu.check_precision(Precision.FP16)
    assert gpu.features() == []
    if not _sees("GPU"):
        options = BuildOptions(backend="openvino-gpu")
        with pytest.raises(BackendUnavailable, match="OpenVINO sees no GPU device"):
            build(str(tiny_model_dir), tmp_path / "gpu", NETWORKS, options)
        assert not (tmp_path / "gpu").exists()


@pytest.mark.skipif(not _sees("GPU"), reason="OpenVINO sees no GPU here")
@pytest.mark.parametrize("precision", [Precision.FP32, Precision.FP16])
def test_openvino_gpu_image_is_diffusers_image(
    tiny_model_dir, euler_reference, tmp_path, precision
):
    options = BuildOptions(backend="openvino-gpu", precision=precision)
    manifest = build(str(tiny_model_dir), tmp_path / "gpu", NETWORKS, options)
    assert manifest.components["unet"].settings["device"] == "GPU"
    image = sdtrt_image(tmp_path / "gpu", "euler")
    if precision is Precision.FP32:
        assert_same_image(euler_reference, image)
    else:
        assert psnr(euler_reference, image) >= REDUCED_PRECISION_PSNR_DB


def test_openvino_npu_refusals_are_one_line(tiny_model_dir, tmp_path):
    """The NPU takes fixed shapes and fp16 (or int8 weights): anything else is refused before
    a build starts, and without an NPU the build says so and writes nothing."""
    npu = OpenVinoNpuBackend()
    for precision in (Precision.FP32, Precision.BF16, Precision.W8A8):
        with pytest.raises(InputError, match=f"not {precision.value}; use --precision fp16"):
            npu.check_precision(precision)
    with pytest.raises(InputError, match="fixed shapes only; build with --static"):
        resolve_build(BuildOptions(backend="openvino-npu", precision=Precision.FP16))
    unsafe_vae = NPU_OPTIONS.model_copy(update={"fp16_vae": False})
    with pytest.raises(InputError, match="computes in fp16 only.*add --fp16-vae"):
        resolve_build(unsafe_vae)
    # The guard runs on fp16 builds only: with int8 weights it would leave the VAE fp32.
    # (the plugin's own check: the options' validation refuses the pair before it, in a build)
    unguarded = unsafe_vae.model_copy(update={"precision": Precision.INT8, "fp16_guard": True})
    with pytest.raises(InputError, match="computes in fp16 only.*add --fp16-vae"):
        npu.check_build(unguarded)
    assert npu.inference_hint(Precision.INT8) == "f16" and npu.features() == []
    if not _sees("NPU"):
        with pytest.raises(BackendUnavailable, match="OpenVINO sees no NPU device"):
            build(str(tiny_model_dir), tmp_path / "npu", NETWORKS, NPU_OPTIONS)
        assert not (tmp_path / "npu").exists()


class _NpuOnTheCpu(OpenVinoNpuBackend):
    """The NPU backend's build and engine, compiled for the CPU: what an NPU build does, short
    of the device (the CPU runs the fp16 graph in fp32)."""

    device = "CPU"

    def inference_hint(self, precision: Precision) -> str:
        return "f32"

    def target(self) -> dict[str, str]:
        return {"device": self.device}


NPU_OPTIONS = BuildOptions(
    backend="openvino-npu", precision=Precision.FP16, fp16_vae=True, static=True, max_batch=1
)


def test_an_npu_build_fixes_every_shape_and_refuses_others(
    tiny_model_dir, euler_reference, tmp_path, monkeypatch
):
    monkeypatch.setitem(backends.BACKENDS, "openvino-npu", _NpuOnTheCpu())
    manifest = build(str(tiny_model_dir), tmp_path / "npu", NETWORKS, NPU_OPTIONS)
    for record in manifest.components.values():
        assert record.precision is Precision.FP16  # the VAE too: the NPU has no fp32
        assert "static_engine" not in record.settings  # the one model is the static one
        for shape in record.io.profile.values():
            assert shape.min == shape.opt == shape.max, record.name
    assert manifest.components["unet"].io.profile["sample"].opt == (2, 4, 32, 32)
    assert manifest.ranges.fixed_shapes and manifest.ranges.max_prompt_chunks == 1
    assert psnr(euler_reference, sdtrt_image(tmp_path / "npu", "euler")) >= (
        REDUCED_PRECISION_PSNR_DB
    )
    with Pipeline.load(tmp_path / "npu") as pipe:
        with pytest.raises(InputError, match=r"fixed shapes: 1 image\(s\) per call, with guid"):
            pipe(**PROMPT, latents=LATENTS, guidance_scale=1.0)  # unguided: batch 1
        with pytest.raises(InputError, match="fixed shapes") as error:
            pipe(**PROMPT, latents=np.concatenate([LATENTS] * 2), num_images_per_prompt=2)
    assert "\n" not in str(error.value)
    # Below the request checks, the engine refuses any other shape too.
    record = manifest.components["unet"]
    feeds = {t.name: np.zeros(record.io.profile[t.name].opt, t.dtype) for t in record.io.inputs}
    with load_component(tmp_path / "npu", record) as unet:
        unet.infer(feeds)
        with pytest.raises(InputError, match="outside the built range"):
            unet.infer({name: array[:1] for name, array in feeds.items()})


@pytest.mark.skipif(not _sees("NPU"), reason="OpenVINO sees no NPU here")
def test_openvino_npu_image_is_diffusers_image(tiny_model_dir, euler_reference, tmp_path):
    build(str(tiny_model_dir), tmp_path / "npu", NETWORKS, NPU_OPTIONS)
    assert read_manifest(tmp_path / "npu").components["unet"].settings["device"] == "NPU"
    image = sdtrt_image(tmp_path / "npu", "euler")
    assert psnr(euler_reference, image) >= REDUCED_PRECISION_PSNR_DB
