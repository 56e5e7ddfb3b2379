"""Euler: the first-order ODE sampler of Karras et al. 2022 (Algorithm 2 without churn)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from sdtrt.errors import InputError
from sdtrt.runtime.schedulers.common import (
    NOISE_SCHEDULE_DEFAULTS,
    Noise,
    Scheduler,
    alphas_cumprod,
    betas,
    check_steps,
)
from sdtrt.runtime.schedulers.sigmas import (
    exponential_sigmas,
    karras_sigmas,
    sigma_to_t,
    training_sigmas,
)


@dataclass(frozen=True)
class SigmaPlan:
    timesteps: np.ndarray  # float32, one per model call
    sigmas: np.ndarray  # float32, one per model call plus the final sigma


def float_timesteps(config: dict[str, Any], steps: int) -> np.ndarray:
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


def sigma_plan(config: dict[str, Any], steps: int) -> SigmaPlan:
    """Timesteps and sigmas as diffusers' discrete k-diffusion schedulers compute them."""
    check_steps(steps, config)
    cumprod = alphas_cumprod(betas(config))
    if config.get("rescale_betas_zero_snr"):
        cumprod[-1] = np.float32(2**-24)
    train = training_sigmas(cumprod)
    log_sigmas = np.log(train)
    timesteps = float_timesteps(config, steps)
    if config["interpolation_type"] == "linear":
        sigmas = np.interp(timesteps, np.arange(0, len(train)), train)
    elif config["interpolation_type"] == "log_linear":
        sigmas = np.exp(
            np.linspace(np.log(train[-1]), np.log(train[0]), steps + 1, dtype=np.float32)
        )
    else:
        raise InputError(f"unsupported interpolation_type '{config['interpolation_type']}'")
    if config.get("use_beta_sigmas"):
        raise InputError("use_beta_sigmas is not supported; use karras or exponential sigmas")
    if config.get("use_karras_sigmas"):
        sigmas = karras_sigmas(config, sigmas, steps)
        timesteps = sigma_to_t(sigmas, log_sigmas)
    elif config.get("use_exponential_sigmas"):
        sigmas = exponential_sigmas(config, sigmas, steps)
        timesteps = sigma_to_t(sigmas, log_sigmas)
    final = config["final_sigmas_type"]
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


class EulerScheduler(Scheduler[SigmaPlan, None]):
    """Euler method on the probability-flow ODE, Karras et al. 2022 (Algorithm 2, no churn)."""

    name = "euler"
    diffusers_name = "EulerDiscreteScheduler"
    defaults: dict[str, Any] = {
        **NOISE_SCHEDULE_DEFAULTS,
        "prediction_type": "epsilon",
        "interpolation_type": "linear",
        "use_karras_sigmas": False,
        "use_exponential_sigmas": False,
        "use_beta_sigmas": False,
        "sigma_min": None,
        "sigma_max": None,
        "timestep_spacing": "linspace",
        "timestep_type": "discrete",
        "steps_offset": 0,
        "rescale_betas_zero_snr": False,
        "final_sigmas_type": "zero",
    }

    def plan(self, num_inference_steps: int) -> SigmaPlan:
        return sigma_plan(self.config, num_inference_steps)

    def timesteps(self, plan: SigmaPlan) -> np.ndarray:
        return plan.timesteps

    def init_noise_sigma(self, plan: SigmaPlan) -> float:
        largest = plan.sigmas.max()
        if self.config["timestep_spacing"] in ("linspace", "trailing"):
            return float(largest)
        return float((largest**2 + 1) ** np.float32(0.5))

    def scale_model_input(self, sample: np.ndarray, i: int, plan: SigmaPlan) -> np.ndarray:
        sigma = plan.sigmas[i]
        return sample / (sigma**2 + 1) ** np.float32(0.5)

    def step(
        self,
        model_output: np.ndarray,
        i: int,
        sample: np.ndarray,
        plan: SigmaPlan,
        state: None,
        noise: Noise,
    ) -> tuple[np.ndarray, None]:
        sigma = plan.sigmas[i]
        prediction = self.config["prediction_type"]
        if prediction in ("original_sample", "sample"):
            x0 = model_output
        elif prediction == "epsilon":
            x0 = sample - sigma * model_output
        elif prediction == "v_prediction":
            x0 = model_output * (-sigma / (sigma**2 + 1) ** np.float32(0.5)) + sample / (
                sigma**2 + 1
            )
        else:
            raise InputError(f"unsupported prediction_type '{prediction}' in scheduler config")
        derivative = (sample - x0) / sigma
        prev = sample + derivative * (plan.sigmas[i + 1] - sigma)
        return prev.astype(np.float32, copy=False), None
