"""TensorRT on a real GPU: builds, parity with torch, CUDA graphs, and the errors users meet.

Marked `gpu`: skipped without an NVIDIA GPU; run with `make test-gpu` where there is one.
"""

import json

import numpy as np
import pytest
from helpers import assert_same_image

from sdtrt.engine.backends import load_component
from sdtrt.engine.manifest import read_manifest
from sdtrt.engine.options import BuildOptions, Precision
from sdtrt.engine.tensorrt_backend import TrtEngine
from sdtrt.errors import ArtifactError, InputError
from sdtrt.export.build import ExportOptions, build
from sdtrt.export.family import load_family
from sdtrt.export.validate import compare, torch_reference
from sdtrt.runtime.pipeline import Pipeline
from sdtrt.tolerances import EXPORT_TOLERANCE

pytestmark = pytest.mark.gpu
COMPONENTS = ("text_encoder", "unet", "vae_decoder", "vae_encoder")


@pytest.fixture(scope="module", params=[Precision.FP32, Precision.FP16])
def trt_engines(request, tiny_model_dir, tmp_path_factory):
    output = tmp_path_factory.mktemp(f"trt-{request.param.value}") / "engines"
    options = BuildOptions(backend="tensorrt", precision=request.param)
    build(str(tiny_model_dir), output, ExportOptions(components=COMPONENTS), options)
    return output


def test_engines_match_torch_across_the_range(trt_engines, tiny_model_dir):
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


def test_cuda_graph_replays_what_plain_execution_computes(tiny_model_dir, tmp_path):
    options = BuildOptions(backend="tensorrt", static=True, max_batch=1)
    build(str(tiny_model_dir), tmp_path / "static", ExportOptions(components=("unet",)), options)
    record = read_manifest(tmp_path / "static").components["unet"]
    assert record.settings["cuda_graph"] is True
    path = tmp_path / "static" / record.engine
    rng = np.random.default_rng(1)
    feeds = {
        "sample": rng.standard_normal((2, 4, 32, 32), dtype=np.float32),
        "timestep": np.full((2,), 321.0, np.float32),
        "encoder_hidden_states": rng.standard_normal((2, 77, 32), dtype=np.float32),
    }
    with TrtEngine("unet", path, record.io, {**record.settings, "cuda_graph": False}) as plain:
        expected = plain.infer(feeds)["noise_pred"]
    with TrtEngine("unet", path, record.io, record.settings) as graphed:
        first = graphed.infer(feeds)["noise_pred"]
        feeds["timestep"][:] = 321.0  # same values, new call: the replay reads the new inputs
        second = graphed.infer(feeds)["noise_pred"]
    assert np.array_equal(first, expected) and np.array_equal(second, expected)


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
