"""DDIM: denoising diffusion implicit models, Song et al. 2020 (deterministic when eta = 0)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from sdtrt.runtime.schedulers.common import (
    NOISE_SCHEDULE_DEFAULTS,
    Noise,
    Scheduler,
    TimestepPlan,
    limit_x0,
    predicted_original,
    timestep_plan,
)


@dataclass(frozen=True)
class DDIMPlan(TimestepPlan):
    step_ratio: int  # diffusers steps back by this whatever the spacing; so do we


class DDIMScheduler(Scheduler[DDIMPlan, None]):
    """DDIM, Song et al. 2020; eta = 0 (the diffusers pipelines' default)."""

    diffusers_name = "DDIMScheduler"
    defaults: ClassVar[dict[str, Any]] = {
        **NOISE_SCHEDULE_DEFAULTS,
        "clip_sample": True,
        "set_alpha_to_one": True,
        "steps_offset": 0,
        "prediction_type": "epsilon",
        "thresholding": False,
        "dynamic_thresholding_ratio": 0.995,
        "clip_sample_range": 1.0,
        "sample_max_value": 1.0,
        "timestep_spacing": "leading",
        "rescale_betas_zero_snr": False,
    }

    def plan(self, num_inference_steps: int) -> DDIMPlan:
        final = np.float32(1.0) if self.config["set_alpha_to_one"] else None
        base = timestep_plan(self.config, num_inference_steps, final)
        return DDIMPlan(
            timesteps=base.timesteps,
            alphas_cumprod=base.alphas_cumprod,
            final_alpha_cumprod=base.final_alpha_cumprod,
            step_ratio=self.config["num_train_timesteps"] // num_inference_steps,
        )

    def step(
        self,
        model_output: np.ndarray,
        i: int,
        sample: np.ndarray,
        plan: DDIMPlan,
        state: None,
        noise: Noise,
    ) -> tuple[np.ndarray, None]:
        t = int(plan.timesteps[i])
        prev_t = t - plan.step_ratio
        alpha_prod = plan.alphas_cumprod[t]
        alpha_prev = plan.alpha_bar(prev_t)
        x0, eps = predicted_original(
            self.config["prediction_type"], model_output, sample, alpha_prod
        )
        x0 = limit_x0(x0, self.config)
        prev = alpha_prev**0.5 * x0 + (1 - alpha_prev) ** 0.5 * eps
        return prev.astype(np.float32, copy=False), None
