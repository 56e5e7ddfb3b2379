"""Euler and Euler ancestral: first-order samplers on sigma, Karras et al. 2022."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from sdtrt.errors import InputError
from sdtrt.runtime.schedulers.common import NOISE_SCHEDULE_DEFAULTS, Noise
from sdtrt.runtime.schedulers.sigmas import SigmaPlan, SigmaScheduler, sigma_plan


class EulerScheduler(SigmaScheduler[SigmaPlan, None]):
    """Euler method on the probability-flow ODE, Karras et al. 2022 (Algorithm 2, no churn)."""

    diffusers_name = "EulerDiscreteScheduler"
    defaults: ClassVar[dict[str, Any]] = {
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
        derivative = (sample - self.denoised(model_output, sample, sigma)) / sigma
        prev = sample + derivative * (plan.sigmas[i + 1] - sigma)
        return prev.astype(np.float32, copy=False), None


class EulerAncestralScheduler(SigmaScheduler[SigmaPlan, None]):
    """Euler ancestral: an Euler step to a lower sigma, then fresh noise back up to the next
    (k-diffusion's sample_euler_ancestral, Karras et al. 2022 with eta = 1)."""

    diffusers_name = "EulerAncestralDiscreteScheduler"
    defaults: ClassVar[dict[str, Any]] = {
        **NOISE_SCHEDULE_DEFAULTS,
        "prediction_type": "epsilon",
        "timestep_spacing": "linspace",
        "steps_offset": 0,
        "rescale_betas_zero_snr": False,
    }

    def plan(self, num_inference_steps: int) -> SigmaPlan:
        return sigma_plan(self.config, num_inference_steps)

    def step(
        self,
        model_output: np.ndarray,
        i: int,
        sample: np.ndarray,
        plan: SigmaPlan,
        state: None,
        noise: Noise,
    ) -> tuple[np.ndarray, None]:
        sigma, sigma_to = plan.sigmas[i], plan.sigmas[i + 1]
        if self.config["prediction_type"] == "sample":
            raise InputError("Euler ancestral does not support prediction_type 'sample'")
        denoised = self.denoised(model_output, sample, sigma)
        sigma_up = (sigma_to**2 * (sigma**2 - sigma_to**2) / sigma**2) ** np.float32(0.5)
        sigma_down = (sigma_to**2 - sigma_up**2) ** np.float32(0.5)
        prev = sample + (sample - denoised) / sigma * (sigma_down - sigma)
        prev = prev + noise(model_output.shape) * sigma_up
        return prev.astype(np.float32, copy=False), None
