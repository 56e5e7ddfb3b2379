"""The k-diffusion family (Euler, Euler ancestral, Heun, LMS): samplers on sigma, the noise level
sigma = sqrt((1 - alpha_bar) / alpha_bar), and the schedules they share."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from sdtrt.errors import InputError
from sdtrt.runtime.schedulers.common import (
    Scheduler,
    StateT,
    alphas_cumprod,
    betas,
    check_steps,
    linspace32,
)


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


@dataclass(frozen=True)
class SigmaPlan:
    timesteps: np.ndarray  # float32, one per model call
    sigmas: np.ndarray  # float32, one per model call plus the final sigma


def float_timesteps(config: Mapping[str, Any], steps: int) -> np.ndarray:
    """Timesteps by spacing, kept fractional where linspace makes them so (float32)."""
    n = int(config["num_train_timesteps"])
    spacing = config["timestep_spacing"]
    if spacing == "linspace":
        return np.linspace(0, n - 1, steps, dtype=np.float32)[::-1].copy()
    if spacing == "leading":
        ratio = n // steps
        result = (np.arange(0, steps) * ratio).round()[::-1].astype(np.float32)
        return result + np.float32(config["steps_offset"])
    if spacing == "trailing":
        return np.arange(n, 0, -n / steps).round().astype(np.float32) - np.float32(1)
    raise InputError(f"unsupported timestep_spacing '{spacing}' in scheduler config")


def sigma_plan(config: Mapping[str, Any], steps: int) -> SigmaPlan:
    """Timesteps and sigmas as diffusers' discrete k-diffusion schedulers compute them."""
    check_steps(steps, config)
    cumprod = alphas_cumprod(betas(config))
    if config.get("rescale_betas_zero_snr"):
        cumprod[-1] = np.float32(2**-24)
    train = training_sigmas(cumprod)
    log_sigmas = np.log(train)
    timesteps = float_timesteps(config, steps)
    interpolation = config.get("interpolation_type", "linear")
    if interpolation == "linear":
        sigmas = np.interp(timesteps, np.arange(0, len(train)), train)
    elif interpolation == "log_linear":
        sigmas = np.exp(linspace32(float(np.log(train[-1])), float(np.log(train[0])), steps + 1))
    else:
        raise InputError(f"unsupported interpolation_type '{interpolation}' in scheduler config")
    if config.get("use_beta_sigmas"):
        raise InputError("use_beta_sigmas is not supported; use karras or exponential sigmas")
    if config.get("use_karras_sigmas"):
        sigmas = karras_sigmas(config, sigmas, steps)
        timesteps = sigma_to_t(sigmas, log_sigmas)
    elif config.get("use_exponential_sigmas"):
        sigmas = exponential_sigmas(config, sigmas, steps)
        timesteps = sigma_to_t(sigmas, log_sigmas)
    final = config.get("final_sigmas_type", "zero")
    if final == "zero":
        last = 0.0
    elif final == "sigma_min":
        last = float(train[0])
    else:
        raise InputError(f"unsupported final_sigmas_type '{final}' in scheduler config")
    sigmas = np.concatenate([sigmas, [last]]).astype(np.float32)
    if config.get("timestep_type") == "continuous" and config["prediction_type"] == "v_prediction":
        timesteps = np.array([0.25 * np.log(s) for s in sigmas[:-1]], dtype=np.float32)
    return SigmaPlan(timesteps=np.asarray(timesteps).astype(np.float32), sigmas=sigmas)


PlanT = TypeVar("PlanT", bound=SigmaPlan)


class SigmaScheduler(Scheduler[PlanT, StateT]):
    """Shared by samplers that step in sigma: inputs scaled by 1 / sqrt(sigma^2 + 1)."""

    def init_noise_sigma(self, plan: PlanT) -> float:
        largest = plan.sigmas.max()
        if self.config["timestep_spacing"] in ("linspace", "trailing"):
            return float(largest)
        return float((largest**2 + 1) ** np.float32(0.5))

    def scale_model_input(self, sample: np.ndarray, i: int, plan: PlanT) -> np.ndarray:
        sigma = plan.sigmas[i]
        return sample / (sigma**2 + 1) ** np.float32(0.5)

    def add_noise(self, original: np.ndarray, noise: np.ndarray, i: int, plan: PlanT) -> np.ndarray:
        """x + sigma * noise at call `i`'s sigma (the variance-exploding form of q(x_t | x_0))."""
        return (original + noise * plan.sigmas[i]).astype(np.float32, copy=False)

    def denoised(
        self, model_output: np.ndarray, sample: np.ndarray, sigma: np.float32
    ) -> np.ndarray:
        """The model's estimate of the clean sample at noise level sigma."""
        prediction = self.config["prediction_type"]
        if prediction in ("original_sample", "sample"):
            return model_output
        if prediction == "epsilon":
            return sample - sigma * model_output
        if prediction == "v_prediction":
            return model_output * (-sigma / (sigma**2 + 1) ** np.float32(0.5)) + sample / (
                sigma**2 + 1
            )
        raise InputError(f"unsupported prediction_type '{prediction}' in scheduler config")
