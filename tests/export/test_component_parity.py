"""Each built engine against its PyTorch module, across the built shape range."""

import numpy as np
import pytest
import torch

from sdtrt.engine.backends import load_component
from sdtrt.engine.manifest import read_manifest
from sdtrt.export.families import load_family
from sdtrt.export.validate import compare, torch_reference
from sdtrt.tolerances import EXPORT_FP32_RELATIVE

COMPONENTS = ("text_encoder", "unet", "vae_decoder", "vae_encoder")


@pytest.fixture(scope="module")
def specs(tiny_model_dir):
    model = load_family(tiny_model_dir, "tiny")
    return {spec.name: spec for spec in model.specs(COMPONENTS)}


def _points(spec, ranges):
    """Smallest, optimal and largest shapes, plus an odd size that no fixed upsampling fits."""
    dims = spec.dims(ranges)
    points = [{s: v[i] for s, v in dims.items()} for i in range(3)]
    odd = dict(points[1])
    for symbol in ("latent_height", "latent_width"):
        if symbol in odd:
            odd[symbol] = odd[symbol] + 1 if odd[symbol] % 2 == 0 else odd[symbol]
    if "height" in odd:
        factor = odd["height"] // points[1]["latent_height"]
        odd["height"], odd["width"] = odd["latent_height"] * factor, odd["latent_width"] * factor
    return points + [odd]


@pytest.mark.parametrize("name", COMPONENTS)
def test_engine_matches_torch_across_the_range(name, specs, tiny_engine_dir):
    manifest = read_manifest(tiny_engine_dir)
    record = manifest.components[name]
    spec = specs[name]
    rng = np.random.default_rng(123)
    engine = load_component(tiny_engine_dir, record)
    with engine, torch.no_grad():
        for point in _points(spec, manifest.ranges):
            inputs = spec.sample_inputs(point, rng)
            report = compare(
                torch_reference(spec, inputs), engine.infer(inputs), EXPORT_FP32_RELATIVE
            )
            for item in report:
                assert item.output_scale > 0
                assert item.relative_error <= EXPORT_FP32_RELATIVE, (point, item)


def test_build_recorded_its_validation(tiny_engine_dir):
    for record in read_manifest(tiny_engine_dir).components.values():
        assert record.validation, record.name
        for item in record.validation:
            assert (
                0 < item.max_abs_error
                and item.relative_error <= item.tolerance == EXPORT_FP32_RELATIVE
            )


def test_an_engine_that_does_not_run_fails_the_build_in_one_line(specs):
    """Seen on a GPU: ONNX Runtime refused a kernel at the validation run, and the build ended
    in a traceback instead of a build error."""
    from sdtrt.errors import BuildError
    from sdtrt.export.validate import validate

    class Refusing:
        def infer(self, inputs):
            raise RuntimeError(
                "Error in execution: Non-zero status code returned while running GroupNorm node. "
                "Name:'GroupNorm_0' Status Message: GroupNorm only supports gamma and beta in "
                "float type"
            )

    spec = specs["vae_decoder"]
    inputs = {"latent": np.zeros((1, 4, 8, 8), np.float32)}
    with pytest.raises(BuildError, match="vae_decoder engine failed to run: .*float type$"):
        validate(spec, Refusing(), inputs, EXPORT_FP32_RELATIVE)
