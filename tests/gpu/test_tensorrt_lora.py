"""LoRA switching on TensorRT by refitting a `--refittable` engine (needs a GPU and TensorRT).

Skipped without them, like tests/gpu/test_tensorrt.py; run with `make test-gpu`.
"""

import importlib.util

import pytest

if importlib.util.find_spec("tensorrt") is None or importlib.util.find_spec(
    "tensorrt"
).origin is None:  # the type stubs alone import as an empty package
    pytest.skip("TensorRT is not installed", allow_module_level=True)

from lora_files import check_switching, two_loras  # noqa: E402

from sdtrt.engine.options import BuildOptions, Precision  # noqa: E402
from sdtrt.export.build import ExportOptions, build  # noqa: E402
from sdtrt.runtime.pipeline import Pipeline  # noqa: E402
from sdtrt.tolerances import END_TO_END_PSNR_DB  # noqa: E402

pytestmark = pytest.mark.gpu
TRT = BuildOptions(backend="tensorrt", precision=Precision.FP32, refittable=True)


def test_refit_switches_like_a_merged_build(tiny_model_dir, lora_files, tmp_path):
    a, b = two_loras(lora_files)
    build(str(tiny_model_dir), tmp_path / "plain", build_options=TRT)
    build(str(tiny_model_dir), tmp_path / "merged", ExportOptions(loras=tuple(a)), TRT)
    check_switching(tmp_path / "plain", tmp_path / "merged", a, b, END_TO_END_PSNR_DB)


def test_an_engine_built_without_refit_says_how_to_rebuild(tiny_model_dir, lora_files, tmp_path):
    from sdtrt.errors import ArtifactError

    fixed = BuildOptions(backend="tensorrt", precision=Precision.FP32)
    build(str(tiny_model_dir), tmp_path / "fixed", build_options=fixed)
    with Pipeline.load(tmp_path / "fixed") as pipe, pytest.raises(ArtifactError, match="refit"):
        pipe.set_loras([lora_files["kohya"]])
