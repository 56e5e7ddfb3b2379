"""Heun: second-order sampler on sigma, Karras et al. 2022 (Algorithm 1 without churn)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from sdtrt.runtime.schedulers.common import NOISE_SCHEDULE_DEFAULTS, Noise, limit_x0
from sdtrt.runtime.schedulers.sigmas import SigmaPlan, SigmaScheduler, sigma_plan


@dataclass(frozen=True)
class HeunState:
    """Between the predictor call and its corrector: the Euler slope, step and start."""

    derivative: np.ndarray
    dt: np.float32
    sample: np.ndarray


class HeunScheduler(SigmaScheduler[SigmaPlan, HeunState | None]):
    """Heun's method, Karras et al. 2022: an Euler step corrected by the slope at its end.

    Every step but the last calls the model twice, so the plan lists each later timestep twice.
    """

    diffusers_name = "HeunDiscreteScheduler"
    order = 2
    defaults: ClassVar[dict[str, Any]] = {
        **NOISE_SCHEDULE_DEFAULTS,
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "prediction_type": "epsilon",
        "use_karras_sigmas": False,
        "use_exponential_sigmas": False,
        "use_beta_sigmas": False,
        "clip_sample": False,
        "clip_sample_range": 1.0,
        "timestep_spacing": "linspace",
        "steps_offset": 0,
    }

    def plan(self, num_inference_steps: int) -> SigmaPlan:
        base = sigma_plan(self.config, num_inference_steps)
        sigmas, timesteps = base.sigmas, base.timesteps
        return SigmaPlan(
            timesteps=np.concatenate([timesteps[:1], timesteps[1:].repeat(2)]),
            sigmas=np.concatenate([sigmas[:1], sigmas[1:-1].repeat(2), sigmas[-1:]]),
        )

    def step(
        self,
        model_output: np.ndarray,
        i: int,
        sample: np.ndarray,
        plan: SigmaPlan,
        state: HeunState | None,
        noise: Noise,
    ) -> tuple[np.ndarray, HeunState | None]:
        predictor = state is None
        sigma, sigma_next = (
            (plan.sigmas[i], plan.sigmas[i + 1])
            if predictor
            else (plan.sigmas[i - 1], plan.sigmas[i])
        )
        denoised = self.denoised(model_output, sample, sigma if predictor else sigma_next)
        denoised = limit_x0(denoised, self.config)
        if state is None:
            derivative = (sample - denoised) / sigma
            dt = sigma_next - sigma
            prev = sample + derivative * dt
            return prev.astype(np.float32, copy=False), HeunState(derivative, dt, sample)
        derivative = (state.derivative + (sample - denoised) / sigma_next) / 2
        prev = state.sample + derivative * state.dt
        return prev.astype(np.float32, copy=False), None
