"""The OpenVINO backend: tiny-model builds in each precision, parity with diffusers, the compiled
model's ties to the CPU, and the one-line refusals."""

from __future__ import annotations

import importlib.util
import shutil
import threading

import numpy as np
import pytest
from helpers import LATENTS, PROMPT, assert_same_image, psnr, sdtrt_image
from helpers import diffusers_images as reference_images

from sdtrt.engine.backends import resolve_build
from sdtrt.engine.host import cpu_flags, isa_features
from sdtrt.engine.manifest import read_manifest
from sdtrt.engine.openvino import cpu as openvino_backend
from sdtrt.engine.openvino import engine as openvino_engine
from sdtrt.engine.openvino.cpu import precision_problem
from sdtrt.engine.openvino.engine import ENGINE_NAME, check_compatible
from sdtrt.engine.options import BuildOptions, Precision
from sdtrt.errors import ArtifactError, EngineIncompatible, InputError
from sdtrt.export.build import ExportOptions, build
from sdtrt.runtime.pipeline import Pipeline
from sdtrt.tolerances import EXPORT_TOLERANCE, REDUCED_PRECISION_PSNR_DB

pytest.importorskip("openvino")

NETWORKS = ExportOptions(components=("text_encoder", "unet", "vae_decoder"))
HAS_BF16 = precision_problem(Precision.BF16, cpu_flags()) is None
needs_bf16 = pytest.mark.skipif(not HAS_BF16, reason="this CPU has no bfloat16 instructions")


def _build(model, output, precision=Precision.FP32, components=NETWORKS, progress=None):
    options = BuildOptions(backend="openvino", precision=precision)
    return build(str(model), output, components, options, progress or (lambda c, s: None))


@pytest.fixture(scope="module")
def fp32_dir(tiny_model_dir, tmp_path_factory):
    output = tmp_path_factory.mktemp("openvino") / "fp32"
    _build(tiny_model_dir, output)
    return output


@pytest.fixture(scope="module")
def bf16_dir(tiny_model_dir, tmp_path_factory):
    if not HAS_BF16:
        pytest.skip("this CPU has no bfloat16 instructions")
    output = tmp_path_factory.mktemp("openvino") / "bf16"
    _build(tiny_model_dir, output, Precision.BF16)
    return output


SCHEDULERS_CHECKED = ("pndm", "euler", "dpmpp_2m")


@pytest.fixture(scope="module")
def diffusers_images(diffusers_pipeline):
    """diffusers' fp32 image per scheduler, from LATENTS."""
    return reference_images(diffusers_pipeline, SCHEDULERS_CHECKED)


def test_manifest_records_what_the_compiled_model_needs(fp32_dir):
    manifest = read_manifest(fp32_dir)
    for record in manifest.components.values():
        assert record.backend == "openvino" and record.engine.endswith(ENGINE_NAME)
        assert record.precision is Precision.FP32
        settings = record.settings
        assert settings["device"] == "CPU" and settings["inference_precision"] == "f32"
        assert settings["openvino_version"] == record.backend_version
        assert settings["cpu_features"] == isa_features(cpu_flags())
        for item in record.validation:
            assert item.relative_error <= EXPORT_TOLERANCE[Precision.FP32]
    assert manifest.build_options.backend == "openvino"


def test_networks_over_images_are_also_compiled_for_their_optimum_shape(fp32_dir):
    """Without --static too: the UNet and VAE get a model compiled for one image at the optimum
    size (the calls most users make), the text encoder none."""
    components = read_manifest(fp32_dir).components
    for name in ("unet", "vae_decoder"):
        record = components[name]
        optimum = {k: list(p.opt) for k, p in record.io.profile.items()}
        assert record.settings["static_shapes"] == optimum
        assert f"{name}/{openvino_engine.STATIC_NAME}" in record.files
    assert "static_engine" not in components["text_encoder"].settings


@pytest.mark.parametrize("scheduler", SCHEDULERS_CHECKED)
def test_fp32_image_is_diffusers_image(fp32_dir, diffusers_images, scheduler):
    assert_same_image(diffusers_images[scheduler], sdtrt_image(fp32_dir, scheduler))


@needs_bf16
def test_bf16_build_puts_the_vae_in_bf16_too(bf16_dir):
    manifest = read_manifest(bf16_dir)
    precisions = {name: r.precision for name, r in manifest.components.items()}
    assert precisions == {
        "text_encoder": Precision.BF16, "unet": Precision.BF16, "vae_decoder": Precision.BF16,
    }  # fmt: skip
    for name in ("unet", "vae_decoder"):
        record = manifest.components[name]
        assert record.settings["inference_precision"] == "bf16"
        # Rounded, not exact: a bf16 graph that matched fp32 to 1e-4 would not compute in bf16.
        error = record.validation[0].relative_error
        assert EXPORT_TOLERANCE[Precision.FP32] < error <= EXPORT_TOLERANCE[Precision.BF16]


@needs_bf16
def test_fp32_vae_keeps_a_bf16_builds_vae_in_fp32(tiny_model_dir, tmp_path):
    options = BuildOptions(backend="openvino", precision=Precision.BF16, fp16_vae=False)
    vae = ExportOptions(components=("vae_decoder",))
    manifest = build(str(tiny_model_dir), tmp_path / "e", vae, options)
    assert manifest.components["vae_decoder"].precision is Precision.FP32


@needs_bf16
@pytest.mark.parametrize("scheduler", SCHEDULERS_CHECKED)
def test_bf16_image_is_still_diffusers_image(bf16_dir, fp32_dir, diffusers_images, scheduler):
    expected = diffusers_images[scheduler]
    reduced, full = sdtrt_image(bf16_dir, scheduler), sdtrt_image(fp32_dir, scheduler)
    assert psnr(expected, reduced) >= REDUCED_PRECISION_PSNR_DB
    assert psnr(full, reduced) < psnr(expected, full)  # bf16 did change the image


@pytest.mark.slow  # NNCF's compression and its import take most of a minute on two cores
@pytest.mark.skipif(importlib.util.find_spec("nncf") is None, reason="NNCF is not installed")
def test_int8_weights_hold_their_tolerance(tiny_model_dir, tmp_path, diffusers_images):
    output = tmp_path / "int8"
    manifest = _build(tiny_model_dir, output, Precision.INT8)
    unet = manifest.components["unet"]
    assert unet.precision is Precision.INT8 and unet.settings["weights"] == "int8"
    assert manifest.components["vae_decoder"].precision is Precision.FP32
    assert 0 < unet.validation[0].relative_error <= EXPORT_TOLERANCE[Precision.INT8]
    image = sdtrt_image(output, "euler")
    assert psnr(diffusers_images["euler"], image) >= REDUCED_PRECISION_PSNR_DB


def test_calls_from_several_threads_agree(fp32_dir):
    with Pipeline.load(fp32_dir) as pipe:
        engine = pipe.engines["unet"]
        rng = np.random.default_rng(1)
        feeds = [
            {
                "sample": rng.standard_normal((2, 4, 32, 32), dtype=np.float32),
                "timestep": np.full((2,), 10.0 * i, dtype=np.float32),
                "encoder_hidden_states": rng.standard_normal((2, 77, 32), dtype=np.float32),
            }
            for i in range(4)
        ]
        alone = [engine.infer(f)["noise_pred"] for f in feeds]
        together: list[np.ndarray | None] = [None] * len(feeds)

        def call(i: int) -> None:
            together[i] = engine.infer(feeds[i])["noise_pred"]

        threads = [threading.Thread(target=call, args=(i,)) for i in range(len(feeds))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    for one, other in zip(alone, together, strict=True):
        np.testing.assert_array_equal(one, other)


def test_a_cpu_without_the_blobs_features_gets_one_rebuild_line(fp32_dir, monkeypatch):
    monkeypatch.setattr(openvino_backend, "cpu_flags", lambda: {"sse4_2"})
    with pytest.raises(EngineIncompatible) as error:
        Pipeline.load(fp32_dir)
    message = str(error.value)
    assert "was compiled for a CPU with" in message and "avx" in message
    assert "rebuild the engines here" in message and "\n" not in message


def test_another_openvino_release_gets_one_rebuild_line(tmp_path):
    settings = {"openvino_version": "2024.0.0", "cpu_features": []}
    with pytest.raises(EngineIncompatible, match="compiled by OpenVINO 2024.0.0, this is"):
        check_compatible(tmp_path / ENGINE_NAME, settings, "2026.4.1", set())
    check_compatible(tmp_path / ENGINE_NAME, settings, "2024.0.0", set())


def test_rebuild_on_another_cpu_compiles_afresh(fp32_dir, tiny_model_dir, tmp_path, monkeypatch):
    """The build key holds the CPU's features, so the old compiled model is not relinked."""
    copy = tmp_path / "engines"
    shutil.copytree(fp32_dir, copy)
    other = {"avx", "avx2", "fma", "f16c"}
    monkeypatch.setattr(openvino_backend, "cpu_flags", lambda: other)
    seen: dict[str, list[str]] = {}
    only = ExportOptions(components=("text_encoder",))
    _build(
        tiny_model_dir, copy, components=only,
        progress=lambda c, s: seen.setdefault(c, []).append(s),
    )  # fmt: skip
    assert seen == {"text_encoder": ["export", "optimize", "validate", "done"]}
    settings = read_manifest(copy).components["text_encoder"].settings
    assert settings["cpu_features"] == sorted(other)


def test_a_damaged_blob_is_refused_with_one_line(fp32_dir, tmp_path):
    copy = tmp_path / "engines"
    shutil.copytree(fp32_dir, copy)
    blob = copy / "text_encoder" / ENGINE_NAME  # imported as the engines load
    blob.write_bytes(bytes(blob.stat().st_size))  # same size, all zeros
    with pytest.raises(ArtifactError, match="could not be loaded.*rebuild the engines") as error:
        Pipeline.load(copy)
    assert "\n" not in str(error.value)


def test_precisions_the_backend_or_cpu_cannot_run_are_refused(monkeypatch):
    with pytest.raises(InputError, match="not fp16; use --precision bf16"):
        resolve_build(BuildOptions(backend="openvino", precision=Precision.FP16))
    with pytest.raises(InputError, match="--precision bf16 is for --backend openvino"):
        resolve_build(BuildOptions(backend="onnxruntime", precision=Precision.BF16))
    monkeypatch.setattr(openvino_backend, "cpu_flags", lambda: {"avx2", "fma"})
    with pytest.raises(InputError, match="no bfloat16 instructions"):
        resolve_build(BuildOptions(backend="openvino", precision=Precision.BF16))


def test_a_refused_precision_writes_nothing(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(openvino_backend, "cpu_flags", lambda: {"avx2", "fma"})
    with pytest.raises(InputError, match="no bfloat16 instructions"):
        _build(tiny_model_dir, tmp_path / "out", Precision.BF16)
    assert list(tmp_path.iterdir()) == []


def test_static_builds_run_their_shape_on_a_static_compile(
    tiny_model_dir, fp32_dir, diffusers_images, tmp_path, monkeypatch
):
    """--static: a second blob compiled for the optimum shape runs calls of that shape; other
    batches run on the main blob, imported on first need; both make the images they should.
    A network whose every shape is fixed (the VAE decoder of one image) has one blob: it is
    the static one."""
    options = BuildOptions(backend="openvino", precision=Precision.FP32, static=True, max_batch=1)
    manifest = build(str(tiny_model_dir), tmp_path / "static", NETWORKS, options)
    unet = manifest.components["unet"]
    assert unet.settings["static_shapes"]["sample"] == [2, 4, 32, 32]  # one image, guided
    assert f"unet/{openvino_engine.STATIC_NAME}" in unet.files
    vae = manifest.components["vae_decoder"]
    assert all(s.min == s.max for s in vae.io.profile.values())
    assert "static_engine" not in vae.settings
    at_load = [openvino_engine.STATIC_NAME] * 2 + [ENGINE_NAME]  # text encoder, UNet, VAE
    imported = []
    original = openvino_engine._Imported.load.__func__

    def load(cls, path, settings):
        imported.append(path.name)
        return original(cls, path, settings)

    monkeypatch.setattr(openvino_engine._Imported, "load", classmethod(load))
    unguided = dict(PROMPT, guidance_scale=1.0)
    with Pipeline.load(tmp_path / "static") as pipe:
        assert imported == at_load
        guided = pipe(**PROMPT, latents=LATENTS, scheduler="euler", output_type="np").images
        assert imported == at_load  # batch 2: the static blob
        alone = pipe(**unguided, latents=LATENTS, output_type="np").images
        assert imported == [*at_load, ENGINE_NAME, ENGINE_NAME]  # text encoder, UNet at batch 1
    assert_same_image(diffusers_images["euler"], guided)
    with Pipeline.load(fp32_dir) as dynamic:
        assert_same_image(dynamic(**unguided, latents=LATENTS, output_type="np").images, alone)
