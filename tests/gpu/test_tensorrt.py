"""TensorRT on a real GPU: builds, parity with torch, CUDA graphs, threads, errors users meet.

Marked `gpu`: skipped without an NVIDIA GPU, and without TensorRT (a GPU machine may have only
ONNX Runtime); run with `make test-gpu` where there is one.
"""

import gc
import importlib.util
import json
import threading

import numpy as np
import pytest


def _tensorrt_missing() -> str | None:
    """Why TensorRT cannot run here, or None. Its type stubs alone import as an empty package,
    so the module must have a real origin."""
    spec = importlib.util.find_spec("tensorrt")
    if spec is None or spec.origin is None:
        return "TensorRT is not installed"
    from sdtrt.engine import cuda
    from sdtrt.errors import BackendUnavailable

    try:
        found = cuda.probe()
    except BackendUnavailable as error:  # no cuda-bindings
        return str(error)
    if found.problem is not None or found.count == 0:
        return found.problem or "no NVIDIA GPU is visible"
    return None


# Checked before anything else is imported: a GPU machine without TensorRT may also lack what
# the rest of these tests import (the export side, pydantic), and must skip, not error.
_MISSING = _tensorrt_missing()
if _MISSING is not None:
    pytest.skip(_MISSING, allow_module_level=True)

from helpers import assert_same_image  # noqa: E402

from sdtrt.engine.backends import load_component  # noqa: E402
from sdtrt.engine.manifest import read_manifest  # noqa: E402
from sdtrt.engine.options import BuildOptions, Precision  # noqa: E402
from sdtrt.errors import ArtifactError, InputError  # noqa: E402
from sdtrt.runtime.pipeline import Pipeline  # noqa: E402
from sdtrt.tolerances import EXPORT_TOLERANCE  # noqa: E402

pytestmark = pytest.mark.gpu
COMPONENTS = ("text_encoder", "unet", "vae_decoder", "vae_encoder")


@pytest.fixture(scope="module", params=[Precision.FP32, Precision.FP16])
def trt_engines(request, tiny_model_dir, tmp_path_factory):
    from sdtrt.export.build import ExportOptions, build

    output = tmp_path_factory.mktemp(f"trt-{request.param.value}") / "engines"
    options = BuildOptions(backend="tensorrt", precision=request.param)
    build(str(tiny_model_dir), output, ExportOptions(components=COMPONENTS), options)
    return output


def test_engines_match_torch_across_the_range(trt_engines, tiny_model_dir):
    # Every network, the VAE decoder and encoder included (their outputs have sizes no input
    # carries: the execution context gives them).
    from sdtrt.export.families import load_family
    from sdtrt.export.validate import compare, torch_reference

    manifest = read_manifest(trt_engines)
    specs = {s.name: s for s in load_family(tiny_model_dir, "tiny").specs(COMPONENTS)}
    rng = np.random.default_rng(0)
    for name, record in manifest.components.items():
        assert record.backend == "tensorrt" and record.settings["compute_capability"]
        spec = specs[name]
        dims = spec.dims(manifest.ranges)
        with load_component(trt_engines, record) as engine:
            for which in range(3):
                inputs = spec.sample_inputs({s: v[which] for s, v in dims.items()}, rng)
                report = compare(torch_reference(spec, inputs), engine.infer(inputs), 1.0)
                for item in report:
                    assert item.relative_error <= EXPORT_TOLERANCE[record.precision], (
                        name,
                        which,
                        item,
                    )


def test_fp32_image_matches_diffusers(trt_engines, diffusers_pipeline):
    if read_manifest(trt_engines).components["unet"].precision is not Precision.FP32:
        pytest.skip("an fp16 image is close to, not the same as, diffusers' fp32 one")
    import torch

    latents = np.random.default_rng(2).standard_normal((1, 4, 32, 32), dtype=np.float32)
    kwargs = dict(prompt="a red car", negative_prompt="fog", num_inference_steps=10)
    expected = diffusers_pipeline(
        **kwargs, latents=torch.from_numpy(latents), output_type="np"
    ).images
    with Pipeline.load(trt_engines) as pipe:
        actual = pipe(**kwargs, latents=latents, output_type="np").images
    assert_same_image(expected, actual)


def test_out_of_profile_requests_get_one_line(trt_engines):
    with Pipeline.load(trt_engines) as pipe:
        with pytest.raises(InputError, match="outside the built range"):
            pipe("a cat", height=256, width=64, num_inference_steps=1)
        unet = pipe.engines["unet"]
        feeds = {
            "sample": np.zeros((20, 4, 32, 32), np.float32),
            "timestep": np.zeros((20,), np.float32),
            "encoder_hidden_states": np.zeros((20, 77, 32), np.float32),
        }
        with pytest.raises(InputError, match="outside the built range"):
            unet.infer(feeds)


def _unet_feeds(rng, rows):
    return {
        "sample": rng.standard_normal((rows, 4, 32, 32), dtype=np.float32),
        "timestep": np.full((rows,), rng.uniform(1, 999), np.float32),
        "encoder_hidden_states": rng.standard_normal((rows, 77, 32), dtype=np.float32),
    }


@pytest.fixture(scope="module")
def static_unet(tiny_model_dir, tmp_path_factory):
    from sdtrt.export.build import ExportOptions, build

    output = tmp_path_factory.mktemp("trt-static") / "engines"
    options = BuildOptions(backend="tensorrt", precision=Precision.FP32, static=True, max_batch=2)
    build(str(tiny_model_dir), output, ExportOptions(components=("unet",)), options)
    record = read_manifest(output).components["unet"]
    assert record.settings["cuda_graph"] is True
    return output / record.engine, record


def test_cuda_graph_replays_what_plain_execution_computes(static_unet):
    # Under --static the batch stays dynamic: 2 images guided (4 rows), 1 guided or 2
    # unguided (2 rows), 1 unguided (1 row). Each shape is called with new values several
    # times, so replays must read the new inputs; a stale replay would repeat old outputs.
    from sdtrt.engine.tensorrt.engine import TrtEngine

    path, record = static_unet
    rng = np.random.default_rng(1)
    calls = [_unet_feeds(rng, rows) for _ in range(3) for rows in (4, 2, 1)]
    plain_settings = {**record.settings, "cuda_graph": False}
    with TrtEngine("unet", path, record.io, plain_settings) as plain:
        expected = [plain.infer(feeds)["noise_pred"] for feeds in calls]
    with TrtEngine("unet", path, record.io, record.settings) as graphed:
        actual = [graphed.infer(feeds)["noise_pred"] for feeds in calls]
    for index, (want, got) in enumerate(zip(expected, actual, strict=True)):
        assert np.array_equal(want, got), index
    same_shape = expected[0::3]
    assert not np.array_equal(same_shape[0], same_shape[1])


def test_calls_in_flight_run_side_by_side(static_unet):
    # One loaded engine, several threads: each call runs in its own execution context, and
    # results are those of the same calls made one at a time.
    from sdtrt.engine.tensorrt.engine import TrtEngine

    path, record = static_unet
    rng = np.random.default_rng(4)
    calls = [_unet_feeds(rng, rows) for rows in (4, 2, 1, 4, 2, 1, 4, 2)]
    with TrtEngine("unet", path, record.io, record.settings) as engine:
        expected = [engine.infer(feeds)["noise_pred"] for feeds in calls]
        held = engine._slots.acquire()  # a call in flight does not hold up another
        try:
            assert np.array_equal(engine.infer(calls[0])["noise_pred"], expected[0])
        finally:
            engine._slots.release(held)
        results: dict[int, np.ndarray] = {}
        barrier = threading.Barrier(len(calls))

        def run(index: int) -> None:
            barrier.wait()
            results[index] = engine.infer(calls[index])["noise_pred"]

        threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(engine._slots) >= 2
    for index, want in enumerate(expected):
        assert np.array_equal(results[index], want), index


def test_close_twice_and_forgotten_engines_free_their_memory(static_unet):
    from sdtrt.engine.tensorrt.engine import TrtEngine, scratch_pool

    path, record = static_unet
    gc.collect()
    pool = scratch_pool()
    assert pool.size == 0 and pool.counts() == (0, 0)  # no TensorRT engine open
    engine = TrtEngine("unet", path, record.io, record.settings)
    engine.infer(_unet_feeds(np.random.default_rng(5), 2))
    assert pool.size > 0 and pool.counts() == (0, 1)
    engine.close()
    engine.close()
    assert pool.size == 0 and pool.counts() == (0, 0)
    with pytest.raises(InputError, match="closed"):
        engine.infer(_unet_feeds(np.random.default_rng(5), 2))
    forgotten = TrtEngine("unet", path, record.io, record.settings)
    forgotten.infer(_unet_feeds(np.random.default_rng(6), 1))
    del forgotten
    gc.collect()
    assert pool.size == 0 and pool.counts() == (0, 0)


def test_an_engine_that_is_not_its_spec_is_refused_at_load(static_unet):
    from sdtrt.engine.tensorrt.engine import TrtEngine

    path, record = static_unet
    (output,) = record.io.outputs
    renamed = record.io.model_copy(update={"outputs": (output.model_copy(update={"name": "x"}),)})
    with pytest.raises(ArtifactError, match="it has no output 'x'.*unexpected output 'noise_pred'"):
        TrtEngine("unet", path, renamed, record.settings)


def test_engine_from_another_tensorrt_is_refused_before_deserialising(trt_engines, tmp_path):
    import shutil

    copy = tmp_path / "engines"
    shutil.copytree(trt_engines, copy)
    manifest_path = copy / "manifest.json"
    data = json.loads(manifest_path.read_text())
    data["components"]["unet"]["settings"]["tensorrt_version"] = "9.0.0"
    manifest_path.write_text(json.dumps(data))
    with pytest.raises(ArtifactError, match="built with TensorRT 9.0.0"):
        Pipeline.load(copy)


@pytest.mark.slow
def test_sd15_fp16_builds_and_runs(tmp_path):
    from sdtrt.export.build import build

    options = BuildOptions(backend="tensorrt", precision=Precision.FP16, max_batch=1)
    build("sd15", tmp_path / "sd15", build_options=options)
    with Pipeline.load(tmp_path / "sd15") as pipe:
        result = pipe("a photo of an astronaut", num_inference_steps=2, output_type="np")
    assert result.images.shape == (1, 512, 512, 3)


def test_read_only_inputs_stay_on_the_gpu_only_while_unchanged(trt_engines):
    manifest = read_manifest(trt_engines)
    with load_component(trt_engines, manifest.components["unet"]) as unet:
        rng = np.random.default_rng(3)
        context = rng.standard_normal((2, 77, 32), dtype=np.float32)
        context.setflags(write=False)
        feeds = {
            "sample": rng.standard_normal((2, 4, 32, 32), dtype=np.float32),
            "timestep": np.full((2,), 500.0, np.float32),
            "encoder_hidden_states": context,
        }
        first = unet.infer(feeds)["noise_pred"]
        again = unet.infer(feeds)["noise_pred"]  # context not copied again
        other = np.ascontiguousarray(context[::-1])
        other.setflags(write=False)
        changed = unet.infer({**feeds, "encoder_hidden_states": other})["noise_pred"]
        back = unet.infer(feeds)["noise_pred"]
    assert np.array_equal(first, again) and np.array_equal(first, back)
    assert not np.array_equal(first, changed)
