"""What every scheduler shares: config merging, noise schedules, and the scheduler interface.

Arithmetic follows diffusers' dtypes (float32 tensors for the training schedule, float64 numpy
where diffusers uses numpy) so that results agree to float32 rounding, not just in spirit.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, TypeVar

import numpy as np

from sdtrt.errors import InputError

# Draws standard normal float32 noise of a shape; stochastic samplers get their noise from it.
Noise = Callable[[tuple[int, ...]], np.ndarray]

PlanT = TypeVar("PlanT")
StateT = TypeVar("StateT")

# Config keys of the training noise schedule, shared by every discrete-time scheduler.
NOISE_SCHEDULE_DEFAULTS: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.0001,
    "beta_end": 0.02,
    "beta_schedule": "linear",
    "trained_betas": None,
}


class Scheduler(ABC, Generic[PlanT, StateT]):
    """A sampler configured like its diffusers namesake, with no hidden state.

    `plan(steps)` computes everything that depends only on the step count; `timesteps(plan)` is
    what the UNet sees at each model call; `step` takes the model output of call `i` and the
    state returned by the previous call, and returns the next latents and state.
    """

    diffusers_name: ClassVar[str]
    defaults: ClassVar[dict[str, Any]]
    order: ClassVar[int] = 1  # model calls per step, as diffusers' `scheduler.order`
    # Flow-matching samplers (SD 3) step along a predicted velocity; the others along predicted
    # noise. A model takes one kind only.
    flow_matching: ClassVar[bool] = False

    def __init__(self, model_config: Mapping[str, Any]) -> None:
        """Take the keys of `model_config` this scheduler knows, like diffusers' `from_config`."""
        self.config = {k: model_config.get(k, v) for k, v in self.defaults.items()}

    @abstractmethod
    def plan(self, num_inference_steps: int) -> PlanT: ...

    def timesteps(self, plan: PlanT) -> np.ndarray:
        """The timestep given to the UNet at each model call, one per call."""
        return plan.timesteps  # type: ignore[attr-defined, no-any-return]

    def init_noise_sigma(self, plan: PlanT) -> float:
        return 1.0

    def initial_state(self, plan: PlanT) -> StateT:
        return None  # type: ignore[return-value]

    def scale_model_input(self, sample: np.ndarray, i: int, plan: PlanT) -> np.ndarray:
        return sample

    def start_at(self, plan: PlanT, skipped_steps: int) -> tuple[PlanT, int]:
        """The plan and first call index for a loop that skips the first `skipped_steps` steps
        (image-to-image): diffusers' `timesteps[t_start * order:]` with `set_begin_index`."""
        return plan, skipped_steps * self.order

    def add_noise(self, original: np.ndarray, noise: np.ndarray, i: int, plan: PlanT) -> np.ndarray:
        """`original` noised to the level the UNet sees at call `i`: the forward process
        q(x_t | x_0) at that call's timestep, Ho et al. 2020, eq. 4."""
        alpha_prod = plan.alphas_cumprod[int(self.timesteps(plan)[i])]  # type: ignore[attr-defined]
        noisy = alpha_prod**0.5 * original + (1 - alpha_prod) ** 0.5 * noise
        return noisy.astype(np.float32, copy=False)

    @abstractmethod
    def step(
        self,
        model_output: np.ndarray,
        i: int,
        sample: np.ndarray,
        plan: PlanT,
        state: StateT,
        noise: Noise,
    ) -> tuple[np.ndarray, StateT]: ...


@dataclass(frozen=True)
class TimestepPlan:
    """Integer timesteps and the training schedule, for samplers that step on alpha_bar."""

    timesteps: np.ndarray  # int64, one per model call
    alphas_cumprod: np.ndarray  # float32, per training timestep
    final_alpha_cumprod: np.float32  # alpha_bar after the last step

    def alpha_bar(self, t: int) -> np.float32:
        """alpha_bar at training timestep t; past the end (t < 0), the final one."""
        return self.alphas_cumprod[t] if t >= 0 else self.final_alpha_cumprod


def timestep_plan(
    config: Mapping[str, Any], steps: int, final_alpha: np.float32 | None
) -> TimestepPlan:
    """Timesteps by spacing; the final alpha_bar is `final_alpha`, or alpha_bar at t = 0."""
    check_steps(steps, config)
    cumprod = alphas_cumprod(betas(config))
    return TimestepPlan(
        timesteps=spaced_timesteps(config, steps),
        alphas_cumprod=cumprod,
        final_alpha_cumprod=cumprod[0] if final_alpha is None else final_alpha,
    )


def check_steps(num_inference_steps: int, config: Mapping[str, Any]) -> None:
    if num_inference_steps < 1:
        raise InputError(f"steps must be at least 1, got {num_inference_steps}")
    if num_inference_steps > config["num_train_timesteps"]:
        raise InputError(
            f"steps must be at most {config['num_train_timesteps']} (the model's training "
            f"timesteps), got {num_inference_steps}"
        )


def linspace32(start: float, end: float, n: int) -> np.ndarray:
    """float32 linspace rounded as torch's CPU kernel rounds it: each value once, from whichever
    end is nearer. Betas one ulp apart move late samples by ~1e-5, so the rounding matters."""
    first, last = np.float64(np.float32(start)), np.float64(np.float32(end))
    step = np.float64(np.float32((np.float32(end) - np.float32(start)) / np.float32(max(n - 1, 1))))
    i = np.arange(n)
    return np.where(i < n // 2, first + step * i, last - step * (n - 1 - i)).astype(np.float32)


def _alpha_bar_cosine(t: float) -> float:
    return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2


def _alpha_bar_exp(t: float) -> float:
    return math.exp(t * -12.0)


def _alpha_bar_laplace(t: float) -> float:
    lmb = -0.5 * math.copysign(1, 0.5 - t) * math.log(1 - 2 * math.fabs(0.5 - t) + 1e-6)
    snr = math.exp(lmb)
    return math.sqrt(snr / (1 + snr))


# beta_schedule names that discretise a continuous alpha_bar(t) (Nichol and Dhariwal 2021).
ALPHA_BAR = {
    "squaredcos_cap_v2": _alpha_bar_cosine,
    "exp": _alpha_bar_exp,
    "laplace": _alpha_bar_laplace,
}


def betas(config: Mapping[str, Any]) -> np.ndarray:
    """The training noise schedule's betas (float32), from beta_schedule or trained_betas."""
    n = int(config["num_train_timesteps"])
    if config.get("trained_betas") is not None:
        result = np.asarray(config["trained_betas"], dtype=np.float32)
    elif config["beta_schedule"] == "linear":
        result = linspace32(config["beta_start"], config["beta_end"], n)
    elif config["beta_schedule"] == "scaled_linear":
        result = linspace32(config["beta_start"] ** 0.5, config["beta_end"] ** 0.5, n) ** 2
    elif config["beta_schedule"] in ALPHA_BAR:
        alpha_bar = ALPHA_BAR[config["beta_schedule"]]
        result = np.array(
            [min(1 - alpha_bar((i + 1) / n) / alpha_bar(i / n), 0.999) for i in range(n)]
        )
    elif config["beta_schedule"] == "sigmoid":
        ramp = linspace32(-6, 6, n)
        result = np.float32(1) / (np.float32(1) + np.exp(-ramp))
        result = result * np.float32(config["beta_end"] - config["beta_start"]) + np.float32(
            config["beta_start"]
        )
    else:
        raise InputError(
            f"unsupported beta_schedule '{config['beta_schedule']}' in scheduler config"
        )
    result = result.astype(np.float32)
    if config.get("rescale_betas_zero_snr"):
        result = rescale_zero_terminal_snr(result)
    return result


def rescale_zero_terminal_snr(beta: np.ndarray) -> np.ndarray:
    """Shift the schedule so the last timestep has zero SNR; Lin et al. 2023, Algorithm 1."""
    root = np.sqrt(alphas_cumprod(beta))
    first, last = root[0].copy(), root[-1].copy()
    root = (root - last) * (first / (first - last))
    bar = root**2
    alphas = np.concatenate([bar[:1], bar[1:] / bar[:-1]])
    return (1 - alphas).astype(np.float32)


def alphas_cumprod(beta: np.ndarray) -> np.ndarray:
    """Cumulative product of (1 - beta), accumulated in float64 as torch does on the CPU."""
    return np.cumprod(1 - beta, dtype=np.float64).astype(np.float32)


def spaced_timesteps(config: Mapping[str, Any], num_inference_steps: int) -> np.ndarray:
    """Integer timesteps, high to low, by config's timestep_spacing (Lin et al. 2023, Table 2)."""
    n = int(config["num_train_timesteps"])
    spacing = config["timestep_spacing"]
    if spacing == "linspace":
        return np.linspace(0, n - 1, num_inference_steps).round()[::-1].astype(np.int64)
    if spacing == "leading":
        ratio = n // num_inference_steps
        steps = (np.arange(0, num_inference_steps) * ratio).round()[::-1].astype(np.int64)
        return steps + int(config["steps_offset"])
    if spacing == "trailing":
        return np.round(np.arange(n, 0, -n / num_inference_steps)).astype(np.int64) - 1
    raise InputError(f"unsupported timestep_spacing '{spacing}' in scheduler config")


def predicted_original(
    prediction_type: str, model_output: np.ndarray, sample: np.ndarray, alpha_prod: np.float32
) -> tuple[np.ndarray, np.ndarray]:
    """(x0, epsilon) from a model output of `prediction_type` at cumulative alpha `alpha_prod`."""
    beta_prod = 1 - alpha_prod
    if prediction_type == "epsilon":
        return (sample - beta_prod**0.5 * model_output) / alpha_prod**0.5, model_output
    if prediction_type == "sample":
        return model_output, (sample - alpha_prod**0.5 * model_output) / beta_prod**0.5
    if prediction_type == "v_prediction":
        return (
            alpha_prod**0.5 * sample - beta_prod**0.5 * model_output,
            alpha_prod**0.5 * model_output + beta_prod**0.5 * sample,
        )
    raise InputError(f"unsupported prediction_type '{prediction_type}' in scheduler config")


def limit_x0(x0: np.ndarray, config: Mapping[str, Any]) -> np.ndarray:
    """The predicted clean sample, dynamically thresholded or clipped as the config asks."""
    if config.get("thresholding"):
        return threshold(x0, config["dynamic_thresholding_ratio"], config["sample_max_value"])
    if config.get("clip_sample"):
        return np.clip(x0, -config["clip_sample_range"], config["clip_sample_range"])
    return x0


def threshold(x0: np.ndarray, ratio: float, max_value: float) -> np.ndarray:
    """Dynamic thresholding, Saharia et al. 2022 (Imagen), per sample."""
    flat = x0.reshape(x0.shape[0], -1).astype(np.float32)
    s = np.quantile(np.abs(flat), ratio, axis=1).astype(np.float32)
    s = np.clip(s, 1, max_value)[:, None]
    return (np.clip(flat, -s, s) / s).reshape(x0.shape)
