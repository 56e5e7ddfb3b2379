"""SD 3 on ONNX Runtime's CUDA provider: the tiny SD 3 model's networks against torch in fp32
(TF32 off) and fp16, and its images against diffusers' SD 3 pipeline (fp32: the same image;
fp16: the same picture).

Marked `gpu`, and skipped unless this onnxruntime has the CUDA provider (onnxruntime-gpu).
"""

import numpy as np
import pytest
import torch
from helpers import ON_CUDA_PROVIDER, assert_same_image, psnr

from sdtrt.engine.backends import load_component
from sdtrt.engine.manifest import read_manifest
from sdtrt.engine.options import BuildOptions, Precision
from sdtrt.export.build import ExportOptions, build
from sdtrt.export.families import load_family
from sdtrt.export.validate import compare, torch_reference
from sdtrt.runtime.pipeline import Pipeline
from sdtrt.tolerances import EXPORT_TOLERANCE, REDUCED_PRECISION_PSNR_DB

pytestmark = ON_CUDA_PROVIDER
COMPONENTS = ("text_encoder", "text_encoder_2", "text_encoder_3", "transformer", "vae_decoder")


@pytest.fixture(scope="module", params=[Precision.FP32, Precision.FP16])
def sd3_cuda(request, preset_build, tmp_path_factory):
    folder, _ = preset_build("tiny-sd3")
    output = tmp_path_factory.mktemp(f"sd3-cuda-{request.param.value}") / "engines"
    options = BuildOptions(backend="onnxruntime-cuda", precision=request.param)
    build(str(folder), output, ExportOptions(components=COMPONENTS), options)
    return folder, output


def test_networks_match_torch_across_the_range(sd3_cuda):
    folder, engines = sd3_cuda
    manifest = read_manifest(engines)
    specs = {s.name: s for s in load_family(folder, "tiny-sd3").specs(COMPONENTS)}
    rng = np.random.default_rng(0)
    for name, record in manifest.components.items():
        spec = specs[name]
        dims = spec.dims(manifest.ranges)
        with load_component(engines, record) as engine:
            for which in range(3):
                inputs = spec.sample_inputs({s: v[which] for s, v in dims.items()}, rng)
                for item in compare(torch_reference(spec, inputs), engine.infer(inputs), 1.0):
                    assert item.relative_error <= EXPORT_TOLERANCE[record.precision], (name, item)


def test_images_match_diffusers(sd3_cuda):
    import diffusers

    folder, engines = sd3_cuda
    reference = diffusers.StableDiffusion3Pipeline.from_pretrained(folder)
    reference.set_progress_bar_config(disable=True)
    latents = np.random.default_rng(1).standard_normal((1, 16, 32, 32), dtype=np.float32)
    prompt = dict(prompt="a red car", negative_prompt="fog", num_inference_steps=8)
    expected = reference(**prompt, latents=torch.from_numpy(latents), output_type="np").images
    with Pipeline.load(engines) as pipe:
        actual = pipe(**prompt, latents=latents, output_type="np").images
    if read_manifest(engines).components["transformer"].precision is Precision.FP32:
        assert_same_image(expected, actual)
    else:
        assert psnr(expected, actual) >= REDUCED_PRECISION_PSNR_DB
