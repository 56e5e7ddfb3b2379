"""ONNX Runtime's CUDA provider on a real GPU: parity with torch in fp32 (TF32 off) and fp16, the
same image as the CPU engines, a saved engine loading in a fresh process, and CUDA-graph replays
that follow changed inputs.

Marked `gpu`, and skipped unless this onnxruntime has the CUDA provider (onnxruntime-gpu).
"""

import shutil
import subprocess
import sys

import numpy as np
import onnx
import pytest
from helpers import ON_CUDA_PROVIDER, assert_same_image, psnr
from onnx import numpy_helper

from sdtrt.debug.compare import compare as debug_compare
from sdtrt.engine.backends import load_component
from sdtrt.engine.graph_style import cuda_only
from sdtrt.engine.manifest import read_manifest
from sdtrt.engine.options import BuildOptions, Precision
from sdtrt.export.build import ExportOptions, build
from sdtrt.export.families import load_family
from sdtrt.export.validate import compare, torch_reference
from sdtrt.runtime.pipeline import Pipeline
from sdtrt.tolerances import END_TO_END_PSNR_DB, EXPORT_TOLERANCE

pytestmark = ON_CUDA_PROVIDER
COMPONENTS = ("text_encoder", "unet", "vae_decoder", "vae_encoder")
BACKEND = "onnxruntime-cuda"
# ONNX Runtime's CUDA GroupNorm sums with atomics, so two runs of the same engine differ in the
# last bits: repeated images are held to the "same computation" bar, not bit for bit.
NONDETERMINISTIC_DB = END_TO_END_PSNR_DB


@pytest.fixture(scope="module", params=[Precision.FP32, Precision.FP16])
def cuda_engines(request, tiny_model_dir, tmp_path_factory):
    output = tmp_path_factory.mktemp(f"ort-cuda-{request.param.value}") / "engines"
    options = BuildOptions(backend=BACKEND, precision=request.param)
    build(str(tiny_model_dir), output, ExportOptions(components=COMPONENTS), options)
    return output


def test_engines_match_torch_across_the_range(cuda_engines, tiny_model_dir):
    manifest = read_manifest(cuda_engines)
    specs = {s.name: s for s in load_family(tiny_model_dir, "tiny").specs(COMPONENTS)}
    rng = np.random.default_rng(0)
    for name, record in manifest.components.items():
        assert record.backend == BACKEND
        spec = specs[name]
        dims = spec.dims(manifest.ranges)
        with load_component(cuda_engines, record) as engine:
            for which in range(3):
                inputs = spec.sample_inputs({s: v[which] for s, v in dims.items()}, rng)
                for item in compare(torch_reference(spec, inputs), engine.infer(inputs), 1.0):
                    allowed = EXPORT_TOLERANCE[record.precision]
                    assert item.relative_error <= allowed, (name, which, item)


def test_engines_run_the_fused_diffusion_kernels(cuda_engines):
    """What the parity test above ran: GroupNorm, NhwcConv and the rest (cuda_fusions.py)."""
    manifest = read_manifest(cuda_engines)
    for name in ("unet", "vae_decoder", "vae_encoder"):
        graph = onnx.load(str(cuda_engines / manifest.components[name].onnx)).graph
        assert cuda_only(graph), name


def test_debug_compare_runs_the_fused_graphs_on_the_gpu(cuda_engines):
    """Its fp32 reference is the export itself, which only the CUDA provider can run."""
    components = read_manifest(cuda_engines).components
    for result in debug_compare(cuda_engines, "a red car"):
        if components[result.component].precision is Precision.FP32:
            assert not result.skipped and result.outputs and not result.diverges, result


def _image(directory, latents):
    with Pipeline.load(directory) as pipe:
        return pipe(
            "a red car", negative_prompt="fog", num_inference_steps=8, latents=latents,
            output_type="np",
        ).images  # fmt: skip


def test_bench_compare_meets_torch_on_the_gpu(cuda_engines, tiny_model_dir):
    from sdtrt.bench.compare import compare as bench_compare
    from sdtrt.bench.runner import BenchOptions

    options = BenchOptions(steps=2, runs=2)
    report = bench_compare(cuda_engines, options, model=tiny_model_dir, torch_compile=False)
    precision = read_manifest(cuda_engines).components["unet"].precision.value
    assert set(report.unet_step) == {report.sdtrt, f"torch eager {precision} (GPU)"}
    assert set(report.end_to_end) == {report.sdtrt, f"diffusers torch eager {precision} (GPU)"}
    assert all(value > 0 for value in report.speedups.values())


def test_image_matches_the_cpu_engines(cuda_engines, tiny_engine_dir):
    latents = np.random.default_rng(2).standard_normal((1, 4, 32, 32), dtype=np.float32)
    expected, actual = _image(tiny_engine_dir, latents), _image(cuda_engines, latents)
    if read_manifest(cuda_engines).components["unet"].precision is Precision.FP32:
        assert_same_image(expected, actual)
    else:
        assert psnr(expected, actual) >= 30.0  # fp16: close, not the same computation


def test_saved_engines_load_in_a_fresh_process(cuda_engines, tmp_path):
    latents = np.random.default_rng(4).standard_normal((1, 4, 32, 32), dtype=np.float32)
    np.save(tmp_path / "latents.npy", latents)
    script = (
        "import sys, numpy as np\n"
        "from sdtrt.runtime.pipeline import Pipeline\n"
        "with Pipeline.load(sys.argv[1]) as pipe:\n"
        "    images = pipe('a red car', negative_prompt='fog', num_inference_steps=8,\n"
        "                  latents=np.load(sys.argv[2]), output_type='np').images\n"
        "np.save(sys.argv[3], images)\n"
    )
    out = tmp_path / "images.npy"
    result = subprocess.run(
        [sys.executable, "-c", script, str(cuda_engines), str(tmp_path / "latents.npy"), str(out)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert psnr(np.load(out), _image(cuda_engines, latents)) >= NONDETERMINISTIC_DB


def _fp32_weight_bytes(path):
    model = onnx.load(str(path))
    return sum(
        numpy_helper.to_array(t).nbytes
        for t in model.graph.initializer
        if t.data_type == onnx.TensorProto.FLOAT
    )


def test_saved_engine_keeps_the_weights_in_their_precision(cuda_engines):
    """A CUDA session saved it: no fp16 weight came back as an fp32 copy (a CPU session's would)."""
    manifest = read_manifest(cuda_engines)
    for record in manifest.components.values():
        engine, export = cuda_engines / record.engine, cuda_engines / record.onnx
        assert engine != export
        assert _fp32_weight_bytes(engine) <= _fp32_weight_bytes(export) + 4096, record.name


def test_an_engine_that_does_not_load_falls_back_to_its_export(cuda_engines, tmp_path, caplog):
    copy = tmp_path / "engines"
    shutil.copytree(cuda_engines, copy)
    record = read_manifest(copy).components["vae_decoder"]
    (copy / record.engine).write_bytes(b"x" * (copy / record.engine).stat().st_size)
    with load_component(copy, record) as engine:
        image = engine.infer({"latent": np.zeros((1, 4, 32, 32), np.float32)})["image"]
    assert image.shape == (1, 3, 64, 64)
    assert "loading its export instead" in caplog.text


def test_cuda_graph_replays_follow_changed_inputs(tiny_model_dir, tiny_engine_dir, tmp_path):
    options = BuildOptions(backend=BACKEND, precision=Precision.FP32, static=True, max_batch=1)
    build(str(tiny_model_dir), tmp_path / "static", ExportOptions(components=("unet",)), options)
    record = read_manifest(tmp_path / "static").components["unet"]
    assert record.settings["cuda_graph"] is True
    cpu_record = read_manifest(tiny_engine_dir).components["unet"]
    rng = np.random.default_rng(1)
    with (
        load_component(tmp_path / "static", record) as graphed,
        load_component(tiny_engine_dir, cpu_record) as plain,
    ):
        for step in range(4):  # new values each call: a stale replay would repeat the first
            feeds = {
                "sample": rng.standard_normal((2, 4, 32, 32), dtype=np.float32),
                "timestep": np.full((2,), 900.0 - 200 * step, np.float32),
                "encoder_hidden_states": rng.standard_normal((2, 77, 32), dtype=np.float32),
            }
            expected = plain.infer(feeds)["noise_pred"]
            got = graphed.infer(feeds)["noise_pred"]
            scale = float(np.max(np.abs(expected)))
            error = float(np.max(np.abs(got - expected)))
            assert error <= EXPORT_TOLERANCE[Precision.FP32] * scale, (step, error, scale)


def test_loras_switch_on_cuda_engines(cuda_engines, tiny_model_dir, lora_files, tmp_path):
    """A -> B -> A gives A again, none restores the build, and the switched engines make
    the image of a CUDA build merged with A (fp32; fp16 to the reduced-precision bar)."""
    from lora_files import check_switching, two_loras

    from sdtrt.tolerances import END_TO_END_PSNR_DB, REDUCED_PRECISION_PSNR_DB

    a, b = two_loras(lora_files)
    precision = read_manifest(cuda_engines).components["unet"].precision
    options = BuildOptions(backend=BACKEND, precision=precision)
    build(str(tiny_model_dir), tmp_path / "merged", ExportOptions(loras=tuple(a)), options)
    bar = END_TO_END_PSNR_DB if precision is Precision.FP32 else REDUCED_PRECISION_PSNR_DB
    check_switching(cuda_engines, tmp_path / "merged", a, b, bar, repeat_db=NONDETERMINISTIC_DB)
