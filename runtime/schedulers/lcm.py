"""LCM: multistep consistency sampling for latent consistency models, Luo et al. 2023."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from sdtrt.errors import InputError
from sdtrt.runtime.schedulers.common import (
    NOISE_SCHEDULE_DEFAULTS,
    Noise,
    Scheduler,
    TimestepPlan,
    alphas_cumprod,
    betas,
    check_steps,
    limit_x0,
    predicted_original,
)

SIGMA_DATA = np.float32(0.5)


class LCMScheduler(Scheduler[TimestepPlan, None]):
    """Latent consistency sampling, Luo et al. 2023: jump to the consistency estimate of the
    clean sample, then re-noise to the next timestep."""

    diffusers_name = "LCMScheduler"
    defaults: ClassVar[dict[str, Any]] = {
        **NOISE_SCHEDULE_DEFAULTS,
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "original_inference_steps": 50,
        "clip_sample": False,
        "clip_sample_range": 1.0,
        "set_alpha_to_one": True,
        "steps_offset": 0,
        "prediction_type": "epsilon",
        "thresholding": False,
        "dynamic_thresholding_ratio": 0.995,
        "sample_max_value": 1.0,
        "timestep_spacing": "leading",
        "timestep_scaling": 10.0,
        "rescale_betas_zero_snr": False,
    }

    def plan(self, num_inference_steps: int) -> TimestepPlan:
        check_steps(num_inference_steps, self.config)
        original = int(self.config["original_inference_steps"])
        if num_inference_steps > original:
            raise InputError(
                f"LCM takes at most {original} steps (the model's original_inference_steps), "
                f"got {num_inference_steps}"
            )
        # The training schedule's timesteps, then evenly spaced picks among them.
        k = int(self.config["num_train_timesteps"]) // original
        origin = (np.arange(1, original + 1) * k - 1)[::-1]
        picks = np.floor(np.linspace(0, len(origin), num=num_inference_steps, endpoint=False))
        cumprod = alphas_cumprod(betas(self.config))
        return TimestepPlan(
            timesteps=origin[picks.astype(np.int64)].astype(np.int64),
            alphas_cumprod=cumprod,
            final_alpha_cumprod=np.float32(1.0) if self.config["set_alpha_to_one"] else cumprod[0],
        )

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
        last = i == len(plan.timesteps) - 1
        prev_t = t if last else int(plan.timesteps[i + 1])
        alpha = plan.alphas_cumprod[t]
        alpha_prev = plan.alpha_bar(prev_t)
        scaled = np.float32(t) * np.float32(self.config["timestep_scaling"])
        c_skip = SIGMA_DATA**2 / (scaled**2 + SIGMA_DATA**2)
        c_out = scaled / (scaled**2 + SIGMA_DATA**2) ** np.float32(0.5)
        x0, _ = predicted_original(self.config["prediction_type"], model_output, sample, alpha)
        x0 = limit_x0(x0, self.config)
        denoised = c_out * x0 + c_skip * sample
        if last:
            return denoised.astype(np.float32, copy=False), None
        z = noise(model_output.shape)
        prev = np.sqrt(alpha_prev) * denoised + np.sqrt(1 - alpha_prev) * z
        return prev.astype(np.float32, copy=False), None
