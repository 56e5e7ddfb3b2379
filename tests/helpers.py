"""Helpers shared by the tests (importable as `helpers`, see pythonpath in pyproject.toml)."""

from __future__ import annotations

import numpy as np

from sdtrt.tolerances import END_TO_END_PSNR_DB


def psnr(reference: np.ndarray, actual: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB of images in [0, 1]."""
    mse = float(np.mean((reference.astype(np.float64) - actual.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(1.0 / mse)


def assert_same_image(reference: np.ndarray, actual: np.ndarray) -> None:
    assert reference.shape == actual.shape
    value = psnr(reference, actual)
    assert value >= END_TO_END_PSNR_DB, f"PSNR {value:.1f} dB < {END_TO_END_PSNR_DB} dB"
