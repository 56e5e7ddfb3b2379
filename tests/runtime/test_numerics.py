"""The run-time NaN/inf guard: a NaN from any step or from the VAE decoder is one clear error
naming the step and the network, never an image."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pytest

from sdtrt.engine.base import Engine
from sdtrt.engine.manifest import read_manifest
from sdtrt.engine.options import Precision
from sdtrt.errors import InputError, NumericalError
from sdtrt.runtime.numerics import check_image, check_step, is_finite
from sdtrt.runtime.pipeline import Pipeline


def test_is_finite_finds_one_bad_element() -> None:
    array = np.zeros((2, 4, 8, 8), dtype=np.float32)
    assert is_finite(array)
    for bad in (np.nan, np.inf, -np.inf):
        array[1, 3, 7, 7] = bad
        assert not is_finite(array)
    # Finite values whose sum leaves the float range are still finite.
    assert is_finite(np.full(4, np.finfo(np.float32).max, dtype=np.float32))


class _Poisoned(Engine):
    """An engine whose output turns NaN from call `first_bad` on (0-based)."""

    def __init__(self, inner: Engine, first_bad: int) -> None:
        super().__init__(inner.name, inner.io)
        self.inner = inner
        self.first_bad = first_bad
        self.calls = 0

    def _run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        result = self.inner.infer(feeds)
        if self.calls >= self.first_bad:
            result = {name: np.full_like(value, np.nan) for name, value in result.items()}
        self.calls += 1
        return result

    def close(self) -> None:
        self.inner.close()


@pytest.mark.parametrize(
    ("component", "first_bad", "message"),
    [
        ("unet", 2, r"the unet produced NaN/inf at step 3 of \d+"),
        ("vae_decoder", 0, "the vae_decoder produced NaN/inf"),
    ],
)
def test_pipeline_raises_instead_of_writing_nan(
    tiny_engine_dir: Path, component: str, first_bad: int, message: str
) -> None:
    with Pipeline.load(tiny_engine_dir) as pipe:
        pipe.engines[component] = _Poisoned(pipe.engines[component], first_bad)
        with pytest.raises(NumericalError, match=message) as caught:
            pipe("a red car", num_inference_steps=4, seed=0, output_type="np")
        assert "\n" not in str(caught.value)
        assert "sdtrt debug compare" in str(caught.value)  # fp32 engines: inspect, not rebuild


def test_nan_initial_latents_are_an_input_error(tiny_engine_dir: Path) -> None:
    with Pipeline.load(tiny_engine_dir) as pipe:
        latents = np.zeros((1, 4, 32, 32), dtype=np.float32)
        latents[0, 0, 0, 0] = np.nan
        with pytest.raises(InputError, match="NaN"):
            pipe("a red car", num_inference_steps=2, latents=latents, guidance_scale=1.0)


@pytest.mark.parametrize(
    ("component", "options", "advice"),
    [
        ("unet", {}, "--precision fp16 --fp16-guard"),
        ("vae_decoder", {"fp16_vae": True}, "rebuild with --fp32-vae"),
        ("vae_decoder", {"fp16_guard": True}, "did not reach this overflow"),
    ],
)
def test_fp16_advice(
    tiny_engine_dir: Path, component: str, options: dict[str, bool], advice: str
) -> None:
    manifest = read_manifest(tiny_engine_dir)
    records = dict(manifest.components)
    records[component] = records[component].model_copy(update={"precision": Precision.FP16})
    build_options = manifest.build_options.model_copy(
        update={"precision": Precision.FP16, **options}
    )
    fp16 = manifest.model_copy(update={"components": records, "build_options": build_options})
    bad = np.full((1, 3, 8, 8), np.inf, dtype=np.float32)
    check = (
        (lambda: check_step(bad, 0, 4, fp16))
        if component == "unet"
        else (lambda: check_image(bad, fp16))
    )
    with pytest.raises(NumericalError, match=advice):
        check()
