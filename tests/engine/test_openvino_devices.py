"""OpenVINO on an Intel GPU or NPU: the refusals everywhere, and parity where OpenVINO sees the
device (skipped elsewhere)."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import assert_same_image, diffusers_images, psnr, sdtrt_image

from sdtrt.engine.backends import choose_backend
from sdtrt.engine.manifest import read_manifest
from sdtrt.engine.openvino_backend import OpenVinoEngine, shared_core
from sdtrt.engine.openvino_devices import OpenVinoGpuBackend, OpenVinoNpuBackend
from sdtrt.engine.options import BuildOptions, Precision
from sdtrt.errors import BackendUnavailable, InputError
from sdtrt.export.build import ExportOptions, build
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
        choose_backend(BuildOptions(backend="openvino-npu", precision=Precision.FP16))
    assert npu.inference_hint(Precision.INT8) == "f16" and npu.features() == []
    if not _sees("NPU"):
        options = BuildOptions(
            backend="openvino-npu", precision=Precision.FP16, static=True, max_batch=1
        )
        with pytest.raises(BackendUnavailable, match="OpenVINO sees no NPU device"):
            build(str(tiny_model_dir), tmp_path / "npu", NETWORKS, options)
        assert not (tmp_path / "npu").exists()


def test_a_fixed_shape_engine_refuses_other_shapes_in_one_line(tiny_model_dir, tmp_path):
    """What an NPU engine does with a call of another shape, shown on the CPU: a CPU build
    whose settings fix the UNet's shapes, as an NPU build's do."""
    options = BuildOptions(backend="openvino", static=True, max_batch=1)
    manifest = build(str(tiny_model_dir), tmp_path / "cpu", NETWORKS, options)
    record = manifest.components["unet"]
    settings = {**record.settings, "fixed_shapes": record.settings["static_shapes"]}
    engine = OpenVinoEngine("unet", tmp_path / "cpu" / record.engine, record.io, settings)
    feeds = {
        "sample": np.zeros((1, 4, 32, 32), np.float32),
        "timestep": np.zeros((1,), np.float32),
        "encoder_hidden_states": np.zeros((1, 77, 32), np.float32),
    }
    with pytest.raises(InputError, match=r"takes sample of shape \[2, 4, 32, 32\] only") as error:
        engine.infer(feeds)
    assert "\n" not in str(error.value)
    guided = {name: np.concatenate([value, value]) for name, value in feeds.items()}
    assert engine.infer(guided)["noise_pred"].shape == (2, 4, 32, 32)
    engine.close()


@pytest.mark.skipif(not _sees("NPU"), reason="OpenVINO sees no NPU here")
def test_openvino_npu_image_is_diffusers_image(tiny_model_dir, euler_reference, tmp_path):
    options = BuildOptions(
        backend="openvino-npu", precision=Precision.FP16, static=True, max_batch=1,
        min_size=(64, 64), opt_size=(64, 64), max_size=(64, 64),
    )  # fmt: skip
    build(str(tiny_model_dir), tmp_path / "npu", NETWORKS, options)
    assert read_manifest(tmp_path / "npu").components["unet"].settings["device"] == "NPU"
    image = sdtrt_image(tmp_path / "npu", "euler")
    assert psnr(euler_reference, image) >= REDUCED_PRECISION_PSNR_DB
