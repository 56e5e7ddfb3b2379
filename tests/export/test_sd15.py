"""The real Stable Diffusion 1.5 architecture, random weights: builds, validates and runs."""

import pytest

from sdtrt.engine.manifest import read_manifest
from sdtrt.engine.options import BuildOptions, Precision
from sdtrt.export.build import build
from sdtrt.runtime.pipeline import Pipeline


@pytest.mark.slow
def test_sd15_builds_and_generates(tmp_path):
    options = BuildOptions(
        precision=Precision.FP32,
        min_size=(256, 256),
        opt_size=(256, 256),
        max_size=(512, 512),
        max_batch=1,
    )
    manifest = build("sd15", tmp_path / "sd15", build_options=options)
    assert manifest.model.native_size == (512, 512) and manifest.ranges.size_step == 8
    unet = read_manifest(tmp_path / "sd15").components["unet"]
    assert any(name.endswith(".data") for name in unet.files)  # 3.4 GB of weights beside the graph
    with Pipeline.load(tmp_path / "sd15") as pipe:
        result = pipe(
            "a photo of an astronaut",
            height=256,
            width=256,
            num_inference_steps=1,
            scheduler="euler",
            output_type="np",
        )
    assert result.images.shape == (1, 256, 256, 3)
