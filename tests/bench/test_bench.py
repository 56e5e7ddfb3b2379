"""`sdtrt bench` and the side-by-side harness on the tiny model."""

import json

import pytest
from typer.testing import CliRunner

from sdtrt.bench.compare import compare, model_folder
from sdtrt.bench.references import TorchTarget, torch_target
from sdtrt.bench.runner import BenchOptions, BenchReport, run_bench
from sdtrt.bench.stats import Latency
from sdtrt.cli import app
from sdtrt.engine.manifest import read_manifest
from sdtrt.errors import InputError


def test_latency_percentiles():
    latency = Latency.of([0.001 * v for v in range(1, 101)])
    assert latency.samples == 100 and latency.p50_ms == pytest.approx(50.5)
    assert latency.p90_ms == pytest.approx(90.1) and latency.p99_ms == pytest.approx(99.01)


def test_bench_report(tiny_engine_dir):
    options = BenchOptions(steps=4, runs=2, warmup=1, scheduler="euler", batch=2, height=48)
    report = run_bench(tiny_engine_dir, options)
    assert (report.height, report.width, report.scheduler, report.unet_calls) == (
        48,
        64,
        "euler",
        4,
    )
    assert report.stages["unet_step"].samples == 8 and report.stages["end_to_end"].samples == 2
    assert all(stage.p50_ms > 0 for stage in report.stages.values())
    assert report.images_per_second == pytest.approx(
        2 / (report.stages["end_to_end"].p50_ms / 1e3), rel=1e-3
    )
    assert report.peak_rss_mib > 0 and 0 < report.import_seconds < 30
    assert report.machine["onnxruntime_providers"]
    assert BenchReport.model_validate_json(report.model_dump_json()) == report


def test_bench_command_writes_json(tiny_engine_dir, tmp_path):
    target = tmp_path / "bench.json"
    result = CliRunner().invoke(
        app, ["bench", str(tiny_engine_dir), "--steps", "2", "--runs", "2", "--json", str(target)]
    )
    assert result.exit_code == 0, result.stderr
    assert "end to end" in result.stdout and "images / s" in result.stdout
    assert json.loads(target.read_text())["stages"]["unet_step"]["samples"] == 6  # PNDM: 3 calls


def test_bench_refuses_bad_options(tiny_engine_dir):
    result = CliRunner().invoke(app, ["bench", str(tiny_engine_dir), "--runs", "0"])
    assert result.exit_code == 1 and "--runs must be >= 1" in result.stderr


def _openvino_default() -> str:
    """OpenVINO's own precision on this CPU: bf16 where the CPU has bfloat16 instructions."""
    from sdtrt.engine.onnxruntime.cpu import cpu_flags

    return "bf16" if cpu_flags() & {"avx512_bf16", "amx_bf16"} else "fp32"


def test_compare_names_every_row_with_its_precision(tiny_engine_dir, tiny_model_dir):
    options = BenchOptions(steps=3, runs=2, scheduler="dpmpp_2m")
    report = compare(tiny_engine_dir, options, model=tiny_model_dir, torch_compile=False)
    ours = "sdtrt onnxruntime fp32"
    openvino_default = f"openvino {_openvino_default()} (its default)"
    assert report.sdtrt == ours
    assert set(report.unet_step) == {
        ours, "torch eager fp32", "openvino fp32 (pinned)", openvino_default,
    }  # fmt: skip
    assert set(report.end_to_end) == {ours, "diffusers torch eager fp32"}
    assert set(report.speedups) == {
        "unet vs torch eager fp32", "unet vs openvino fp32 (pinned)",
        f"unet vs {openvino_default}", "image vs diffusers torch eager fp32",
    }  # fmt: skip
    assert all(value > 0 for value in report.speedups.values())
    assert report.host_step_us > 0


@pytest.mark.slow  # builds OpenVINO engines and runs every reference: ~40 s on two cores
def test_compare_on_openvino_engines_adds_onnxruntime_on_the_same_graph(tiny_model_dir, tmp_path):
    from sdtrt.engine.options import BuildOptions, Precision
    from sdtrt.export.build import build

    output = tmp_path / "engines"
    build(
        str(tiny_model_dir),
        output,
        build_options=BuildOptions(backend="openvino", precision=Precision.FP32),
    )
    options = BenchOptions(steps=2, runs=1)
    report = compare(output, options, model=tiny_model_dir, torch_compile=False)
    assert report.sdtrt == f"sdtrt openvino {Precision.FP32.value}"
    assert "onnxruntime fp32 (same graph)" in report.unet_step


def test_cuda_engines_meet_torch_on_the_gpu_in_their_precision():
    from sdtrt.engine.options import Precision

    assert torch_target("onnxruntime-cuda", Precision.FP16) == TorchTarget("cuda", Precision.FP16)
    gpu_fp32 = torch_target("tensorrt", Precision.FP32)
    assert gpu_fp32.label("torch.compile") == "torch.compile fp32 (GPU)"
    # CPU engines, whatever their precision, meet torch's fp32 CPU kernels.
    for backend, precision in [("onnxruntime", Precision.FP16), ("openvino", Precision.INT8)]:
        target = torch_target(backend, precision)
        assert target == TorchTarget("cpu", Precision.FP32)
        assert target.label("torch eager") == "torch eager fp32"


@pytest.mark.slow  # inductor compiles the UNet's C++ kernels: minutes on two cores
def test_compare_adds_torch_compile(tiny_engine_dir, tiny_model_dir):
    options = BenchOptions(steps=2, runs=1)
    report = compare(tiny_engine_dir, options, model=tiny_model_dir)
    assert "torch.compile fp32" in report.unet_step


def test_reference_folder_comes_from_the_manifest_or_the_option(
    tiny_engine_dir, tiny_model_dir, tmp_path
):
    manifest = read_manifest(tiny_engine_dir)
    assert model_folder(manifest, None) == str(tiny_model_dir)
    assert model_folder(manifest, tiny_model_dir) == str(tiny_model_dir)
    with pytest.raises(InputError, match="is not a diffusers model folder"):
        model_folder(manifest, tmp_path)
    preset = manifest.model_copy(
        update={"source": manifest.source.model_copy(update={"kind": "preset", "ref": "sd15"})}
    )
    with pytest.raises(InputError, match="pass --model with its diffusers folder"):
        model_folder(preset, None)


@pytest.mark.slow  # 25 s
def test_compare_on_sd3_engines_built_without_t5(preset_build, tmp_path):
    """SD 3's transformer against diffusers' on the same inputs, and whole images against
    diffusers' pipeline loaded without T5, as the engines were built."""
    from sdtrt.engine.options import BuildOptions
    from sdtrt.export.build import ExportOptions, build

    folder, _ = preset_build("tiny-sd3")
    engines = tmp_path / "engines"
    components = ("text_encoder", "text_encoder_2", "transformer", "vae_decoder")
    build(
        str(folder),
        engines,
        ExportOptions(components=components),
        BuildOptions(backend="onnxruntime"),
    )
    report = compare(engines, BenchOptions(steps=2, runs=2), torch_compile=False)
    assert report.sdtrt == "sdtrt onnxruntime fp32"
    assert "torch eager fp32" in report.unet_step
    assert set(report.end_to_end) == {report.sdtrt, "diffusers torch eager fp32"}
    assert all(value > 0 for value in report.speedups.values())


def test_references_that_cannot_fit_are_left_out_with_a_line(caplog):
    from sdtrt.bench.compare import _unet_rounds

    loaded = []

    def loader():
        loaded.append(True)
        return "never", lambda: 1.0

    resident = {"ours": lambda: 0.5}
    rows = _unet_rounds(resident, "ours", [loader], 2, lambda _: None, loader_bytes=2**60)
    assert set(rows) == {"ours"} and not loaded
    assert "left out the CPU runtimes on the same graph" in caplog.text
    assert set(_unet_rounds(resident, "ours", [loader], 2, lambda _: None)) == {"ours", "never"}


def test_compare_takes_separate_turns_where_diffusers_cannot_fit_beside(
    tiny_engine_dir, tiny_model_dir, monkeypatch, caplog
):
    """An SDXL comparison on a 24 GiB machine was killed for memory with both sides loaded:
    where diffusers cannot fit beside sdtrt's engines, sdtrt takes its turns first, and the
    references theirs once its engines are let go."""
    import psutil

    real = psutil.virtual_memory()
    monkeypatch.setattr(psutil, "virtual_memory", lambda: real._replace(available=2**30))
    options = BenchOptions(steps=2, runs=2)
    report = compare(tiny_engine_dir, options, model=tiny_model_dir, torch_compile=False)
    assert not report.interleaved
    assert "sdtrt's turns come first" in caplog.text
    ours = "sdtrt onnxruntime fp32"
    assert {ours, "torch eager fp32"} <= set(report.unet_step)
    assert report.unet_step[ours].samples == 2  # its own turns only
    assert set(report.end_to_end) == {ours, "diffusers torch eager fp32"}
    assert all(value > 0 for value in report.speedups.values())


def test_compare_is_refused_where_diffusers_cannot_fit_at_all(
    tiny_engine_dir, tiny_model_dir, monkeypatch
):
    import psutil

    from sdtrt.errors import InputError

    real = psutil.virtual_memory()
    monkeypatch.setattr(psutil, "virtual_memory", lambda: real._replace(total=2**30))
    with pytest.raises(InputError, match=r"runs diffusers' fp32 pipeline, which needs about") as e:
        compare(tiny_engine_dir, BenchOptions(steps=2, runs=1), model=tiny_model_dir)
    assert "\n" not in str(e.value)
