"""DDPM: ancestral sampling of denoising diffusion probabilistic models, Ho et al. 2020."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from sdtrt.errors import InputError
from sdtrt.runtime.schedulers.common import (
    NOISE_SCHEDULE_DEFAULTS,
    Noise,
    Scheduler,
    TimestepPlan,
    limit_x0,
    predicted_original,
    timestep_plan,
)

VARIANCES = ("fixed_small", "fixed_small_log", "fixed_large")


class DDPMScheduler(Scheduler[TimestepPlan, None]):
    """DDPM, Ho et al. 2020: the posterior mean of the previous sample plus fresh noise."""

    diffusers_name = "DDPMScheduler"
    defaults: ClassVar[dict[str, Any]] = {
        **NOISE_SCHEDULE_DEFAULTS,
        "variance_type": "fixed_small",
        "clip_sample": True,
        "prediction_type": "epsilon",
        "thresholding": False,
        "dynamic_thresholding_ratio": 0.995,
        "clip_sample_range": 1.0,
        "sample_max_value": 1.0,
        "timestep_spacing": "leading",
        "steps_offset": 0,
        "rescale_betas_zero_snr": False,
    }

    def __init__(self, model_config: dict[str, Any]) -> None:
        super().__init__(model_config)
        if self.config["variance_type"] not in VARIANCES:
            raise InputError(
                f"DDPM variance_type '{self.config['variance_type']}' is not supported; "
                f"sdtrt supports {', '.join(VARIANCES)}"
            )

    def plan(self, num_inference_steps: int) -> TimestepPlan:
        return timestep_plan(self.config, num_inference_steps, final_alpha=np.float32(1.0))

    def step(
        self,
        model_output: np.ndarray,
        i: int,
        sample: np.ndarray,
        plan: TimestepPlan,
        state: None,
        noise: Noise,
    ) -> tuple[np.ndarray, None]:
        t = int(plan.timesteps[i])
        prev_t = int(plan.timesteps[i + 1]) if i + 1 < len(plan.timesteps) else -1
        alpha = plan.alphas_cumprod[t]
        alpha_prev = plan.alpha_bar(prev_t)
        beta, beta_prev = 1 - alpha, 1 - alpha_prev
        current_alpha = alpha / alpha_prev
        current_beta = 1 - current_alpha
        x0, _ = predicted_original(self.config["prediction_type"], model_output, sample, alpha)
        x0 = limit_x0(x0, self.config)
        x0_coeff = alpha_prev**0.5 * current_beta / beta
        sample_coeff = current_alpha**0.5 * beta_prev / beta
        prev = x0_coeff * x0 + sample_coeff * sample
        if t > 0:
            z = noise(model_output.shape)
            variance = max((1 - alpha_prev) / (1 - alpha) * current_beta, np.float32(1e-20))
            kind = self.config["variance_type"]
            if kind == "fixed_small":
                prev = prev + variance**0.5 * z
            elif kind == "fixed_small_log":
                prev = prev + np.exp(np.float32(0.5) * np.log(variance)) * z
            else:
                prev = prev + current_beta**0.5 * z
        return prev.astype(np.float32, copy=False), None
