"""What the exponential-integrator multistep solvers (DPM-Solver++, UniPC, DEIS) share.

They step in half-log-SNR lambda = log(alpha_t / sigma_t) between integer timesteps spaced over
steps + 1 points, and keep the last few model outputs (converted to data or noise predictions)
as their history.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sdtrt.errors import InputError
from sdtrt.runtime.schedulers.common import (
    NOISE_SCHEDULE_DEFAULTS,
    Scheduler,
    alphas_cumprod,
    betas,
    check_steps,
    limit_x0,
)
from sdtrt.runtime.schedulers.sigmas import (
    exponential_sigmas,
    karras_sigmas,
    sigma_to_t,
    training_sigmas,
)

MULTISTEP_DEFAULTS: dict[str, Any] = {
    **NOISE_SCHEDULE_DEFAULTS,
    "solver_order": 2,
    "prediction_type": "epsilon",
    "thresholding": False,
    "dynamic_thresholding_ratio": 0.995,
    "sample_max_value": 1.0,
    "lower_order_final": True,
    "use_karras_sigmas": False,
    "use_exponential_sigmas": False,
    "use_beta_sigmas": False,
    "use_flow_sigmas": False,
    "flow_shift": 1.0,
    "timestep_spacing": "linspace",
    "steps_offset": 0,
    "use_dynamic_shifting": False,
    "time_shift_type": "exponential",
}


@dataclass(frozen=True)
class MultistepPlan:
    timesteps: np.ndarray  # int64, one per model call
    sigmas: np.ndarray  # float32, one per call plus the final one
    alpha: np.ndarray = field(repr=False)  # alpha_t = 1 / sqrt(sigma^2 + 1), per sigma
    sigma_t: np.ndarray = field(repr=False)  # sigma_t = sigma * alpha_t
    lam: np.ndarray = field(repr=False)  # lambda = log(alpha_t) - log(sigma_t)


@dataclass(frozen=True)
class History:
    """Converted model outputs, oldest first, and how many steps have run (capped at the order)."""

    outputs: tuple[np.ndarray, ...] = ()
    warmed: int = 0


def spread_timesteps(config: Mapping[str, Any], steps: int, last: int) -> np.ndarray:
    """Integer timesteps spread over steps + 1 points with the final point dropped."""
    spacing = config["timestep_spacing"]
    if spacing == "linspace":
        return np.linspace(0, last - 1, steps + 1).round()[::-1][:-1].astype(np.int64)
    if spacing == "leading":
        ratio = last // (steps + 1)
        spread = (np.arange(0, steps + 1) * ratio).round()[::-1][:-1].astype(np.int64)
        return spread + int(config["steps_offset"])
    if spacing == "trailing":
        ratio = config["num_train_timesteps"] / steps
        return np.arange(last, 0, -ratio).round().astype(np.int64) - 1
    raise InputError(f"unsupported timestep_spacing '{spacing}' in scheduler config")


class MultistepScheduler(Scheduler[MultistepPlan, Any]):
    """Base of the lambda-stepping solvers: the plan, output conversion and history."""

    def add_noise(
        self, original: np.ndarray, noise: np.ndarray, i: int, plan: MultistepPlan
    ) -> np.ndarray:
        """alpha_t * x + sigma_t * noise at call `i`'s noise level."""
        noisy = plan.alpha[i] * original + plan.sigma_t[i] * noise
        return noisy.astype(np.float32, copy=False)

    def _last_timestep(self, cumprod: np.ndarray) -> int:
        return int(self.config["num_train_timesteps"])

    def _round_karras_timesteps(self) -> bool:
        return True

    def _final_sigma(self, converted: bool, sigmas: np.ndarray, smallest: np.float32) -> float:
        """The sigma after the last step; `converted` when the schedule was Karras/exponential."""
        final = self.config.get("final_sigmas_type", "zero")
        if final not in ("zero", "sigma_min"):
            raise InputError(f"unsupported final_sigmas_type '{final}' in scheduler config")
        return 0.0 if final == "zero" else float(smallest)

    def plan(self, num_inference_steps: int) -> MultistepPlan:
        config = self.config
        check_steps(num_inference_steps, config)
        for unsupported in ("use_flow_sigmas", "use_dynamic_shifting", "use_beta_sigmas"):
            if config.get(unsupported):
                raise InputError(f"{unsupported} is not supported by {self.diffusers_name} here")
        cumprod = alphas_cumprod(betas(config))
        if config.get("rescale_betas_zero_snr"):
            cumprod[-1] = np.float32(2**-24)
        train = training_sigmas(cumprod)
        log_sigmas = np.log(train)
        smallest = train[0]
        timesteps = spread_timesteps(config, num_inference_steps, self._last_timestep(cumprod))
        converted = True
        if config.get("use_karras_sigmas"):
            sigmas = karras_sigmas(config, train[::-1], num_inference_steps)
            timesteps = sigma_to_t(sigmas, log_sigmas)
            if self._round_karras_timesteps():
                timesteps = timesteps.round()
        elif config.get("use_lu_lambdas"):
            # Lu et al. 2022's schedule: uniform in log sigma between the training extremes.
            high, low = float(log_sigmas[-1]), float(log_sigmas[0])
            sigmas = np.exp(high + np.linspace(0, 1, num_inference_steps) * (low - high))
            timesteps = sigma_to_t(sigmas, log_sigmas)
            if self._round_karras_timesteps():
                timesteps = timesteps.round()
        elif config.get("use_exponential_sigmas"):
            sigmas = exponential_sigmas(config, train[::-1], num_inference_steps)
            timesteps = sigma_to_t(sigmas, log_sigmas)
        else:
            converted = False
            sigmas = np.interp(timesteps, np.arange(0, len(train)), train)
        last = self._final_sigma(converted, sigmas, smallest)
        sigmas = np.concatenate([sigmas, [last]]).astype(np.float32)
        alpha = (1 / (sigmas**2 + 1) ** np.float32(0.5)).astype(np.float32)
        sigma_t = sigmas * alpha
        with np.errstate(divide="ignore"):  # a final sigma of 0 has lambda = +inf, by design
            lam = np.log(alpha) - np.log(sigma_t)
        return MultistepPlan(
            timesteps=np.asarray(timesteps).astype(np.int64),
            sigmas=sigmas,
            alpha=alpha,
            sigma_t=sigma_t,
            lam=lam,
        )

    def initial_state(self, plan: MultistepPlan) -> Any:
        return History()

    def data_prediction(
        self, model_output: np.ndarray, sample: np.ndarray, i: int, plan: MultistepPlan
    ) -> np.ndarray:
        """The clean sample the model output implies at call i (thresholded if configured)."""
        prediction = self.config["prediction_type"]
        alpha, sigma = plan.alpha[i], plan.sigma_t[i]
        if prediction == "epsilon":
            x0 = (sample - sigma * model_output) / alpha
        elif prediction == "sample":
            x0 = model_output
        elif prediction == "v_prediction":
            x0 = alpha * sample - sigma * model_output
        else:
            raise InputError(f"unsupported prediction_type '{prediction}' in scheduler config")
        return limit_x0(x0, self.config)

    def noise_prediction(
        self, model_output: np.ndarray, sample: np.ndarray, i: int, plan: MultistepPlan
    ) -> np.ndarray:
        """The noise the model output implies at call i."""
        prediction = self.config["prediction_type"]
        alpha, sigma = plan.alpha[i], plan.sigma_t[i]
        if prediction == "epsilon":
            epsilon = model_output
        elif prediction == "sample":
            epsilon = (sample - alpha * model_output) / sigma
        elif prediction == "v_prediction":
            epsilon = alpha * model_output + sigma * sample
        else:
            raise InputError(f"unsupported prediction_type '{prediction}' in scheduler config")
        if self.config["thresholding"]:
            x0 = limit_x0((sample - sigma * epsilon) / alpha, self.config)
            epsilon = (sample - alpha * x0) / sigma
        return epsilon

    def remember(self, history: History, output: np.ndarray) -> History:
        order = int(self.config["solver_order"])
        return History(outputs=(*history.outputs, output)[-order:], warmed=history.warmed)

    def warmed(self, history: History) -> History:
        return History(
            outputs=history.outputs,
            warmed=min(history.warmed + 1, int(self.config["solver_order"])),
        )
