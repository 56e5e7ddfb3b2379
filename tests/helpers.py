"""Helpers shared by the tests (importable as `helpers`, see pythonpath in pyproject.toml)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import pytest

from sdtrt.tolerances import END_TO_END_PSNR_DB


def _has_cuda_provider() -> bool:
    try:
        import onnxruntime
    except ImportError:
        return False
    return "CUDAExecutionProvider" in onnxruntime.get_available_providers()


# The marks of tests that need onnxruntime-gpu's CUDA provider (and a GPU).
ON_CUDA_PROVIDER = [
    pytest.mark.gpu,
    pytest.mark.skipif(not _has_cuda_provider(), reason="onnxruntime has no CUDA provider"),
]


def psnr(reference: np.ndarray, actual: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB of images in [0, 1]."""
    mse = float(np.mean((reference.astype(np.float64) - actual.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(1.0 / mse)


def assert_same_image(reference: np.ndarray, actual: np.ndarray) -> None:
    assert reference.shape == actual.shape
    value = psnr(reference, actual)
    assert value >= END_TO_END_PSNR_DB, f"PSNR {value:.1f} dB < {END_TO_END_PSNR_DB} dB"


def sdtrt(*args: object):  # type: ignore[no-untyped-def]
    """Run the `sdtrt` command in this process, as a user would type it."""
    from typer.testing import CliRunner

    from sdtrt.cli import app

    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)


def assert_one_line_error(result, message: str) -> None:  # type: ignore[no-untyped-def]
    """Exit status 1 and one `error: ...` line on stderr that says `message`."""
    assert result.exit_code == 1, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert message in lines[0], lines[0]


# One prompt and starting noise for the OpenVINO tests' images (the tiny model, 64x64).
PROMPT = dict(prompt="a photo of an astronaut", negative_prompt="blurry", num_inference_steps=8)
LATENTS = np.random.default_rng(0).standard_normal((1, 4, 32, 32), dtype=np.float32)


@contextlib.contextmanager
def using_scheduler(pipeline, scheduler: str | None) -> Iterator[None]:  # type: ignore[no-untyped-def]
    """diffusers' `pipeline` with the scheduler sdtrt calls `scheduler` (its own for None),
    its own again afterwards."""
    import diffusers

    from sdtrt.runtime.schedulers import SCHEDULERS

    original = pipeline.scheduler
    if scheduler is not None:
        choice = SCHEDULERS[scheduler]
        cls = getattr(diffusers, choice.cls.diffusers_name)
        pipeline.scheduler = cls.from_config({**original.config, **choice.overrides})
    try:
        yield
    finally:
        pipeline.scheduler = original


def diffusers_images(pipeline, schedulers: tuple[str, ...]) -> dict[str, np.ndarray]:  # type: ignore[no-untyped-def]
    """diffusers' fp32 image of PROMPT from LATENTS with each of sdtrt's `schedulers`."""
    import torch

    images = {}
    for scheduler in schedulers:
        with using_scheduler(pipeline, scheduler):
            images[scheduler] = pipeline(
                **PROMPT, latents=torch.from_numpy(LATENTS), output_type="np"
            ).images
    return images


def sdtrt_image(directory, scheduler: str | None = None) -> np.ndarray:  # type: ignore[no-untyped-def]
    """sdtrt's image of PROMPT from LATENTS with the engines in `directory`."""
    from sdtrt.runtime.pipeline import Pipeline

    with Pipeline.load(directory) as pipe:
        return pipe(**PROMPT, latents=LATENTS, scheduler=scheduler, output_type="np").images
