"""Sigma schedules for the k-diffusion family (sigma = sqrt((1 - alpha_bar) / alpha_bar))."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np


def training_sigmas(alphas_cumprod: np.ndarray) -> np.ndarray:
    """Noise level of every training timestep, low to high (float32)."""
    return ((1 - alphas_cumprod) / alphas_cumprod) ** np.float32(0.5)


def sigma_to_t(sigma: np.ndarray, log_sigmas: np.ndarray) -> np.ndarray:
    """The (fractional) training timestep of each sigma, by interpolating log sigma."""
    log_sigma = np.log(np.maximum(sigma, 1e-10))
    dists = log_sigma - log_sigmas[:, np.newaxis]
    low = np.cumsum(dists >= 0, axis=0).argmax(axis=0).clip(max=log_sigmas.shape[0] - 2)
    high = low + 1
    w = np.clip((log_sigmas[low] - log_sigma) / (log_sigmas[low] - log_sigmas[high]), 0, 1)
    return ((1 - w) * low + w * high).reshape(sigma.shape)


def _bounds(config: Mapping[str, Any], sigmas: np.ndarray) -> tuple[float, float]:
    low = config.get("sigma_min")
    high = config.get("sigma_max")
    return (
        float(low) if low is not None else float(sigmas[-1]),
        float(high) if high is not None else float(sigmas[0]),
    )


def karras_sigmas(config: Mapping[str, Any], sigmas: np.ndarray, steps: int) -> np.ndarray:
    """Karras et al. 2022, eq. 5: sigmas evenly spaced in sigma^(1/7)."""
    low, high = _bounds(config, sigmas)
    rho = 7.0
    ramp = np.linspace(0, 1, steps)
    return (high ** (1 / rho) + ramp * (low ** (1 / rho) - high ** (1 / rho))) ** rho


def exponential_sigmas(config: Mapping[str, Any], sigmas: np.ndarray, steps: int) -> np.ndarray:
    """Sigmas evenly spaced in log sigma."""
    low, high = _bounds(config, sigmas)
    return np.exp(np.linspace(math.log(high), math.log(low), steps))
