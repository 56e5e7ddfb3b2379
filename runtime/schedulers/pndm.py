"""PNDM: pseudo numerical methods for diffusion models, Liu et al. 2022 (PRK warm-up + PLMS)."""

from __future__ import annotations

from dataclasses import dataclass
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
    spaced_timesteps,
)

ORDER = 4  # PRK warms up the four-step linear multistep method


@dataclass(frozen=True)
class PNDMPlan(TimestepPlan):
    """Timesteps: the Runge-Kutta warm-up calls, then the multistep ones."""

    prk_calls: int
    step_ratio: int


@dataclass(frozen=True)
class PNDMState:
    ets: tuple[np.ndarray, ...] = ()  # past model outputs, oldest first
    cur_sample: np.ndarray | None = None
    cur_model_output: np.ndarray | float = 0.0


class PNDMScheduler(Scheduler[PNDMPlan, PNDMState]):
    """PNDM, Liu et al. 2022: Runge-Kutta warm-up (unless skipped) then linear multistep."""

    diffusers_name = "PNDMScheduler"
    defaults: ClassVar[dict[str, Any]] = {
        **NOISE_SCHEDULE_DEFAULTS,
        "skip_prk_steps": False,
        "set_alpha_to_one": False,
        "prediction_type": "epsilon",
        "timestep_spacing": "leading",
        "steps_offset": 0,
    }

    def plan(self, num_inference_steps: int) -> PNDMPlan:
        check_steps(num_inference_steps, self.config)
        base = spaced_timesteps(self.config, num_inference_steps)[::-1]  # ascending
        ratio = self.config["num_train_timesteps"] // num_inference_steps
        if self.config["skip_prk_steps"]:
            prk = np.array([], dtype=np.int64)
            plms = np.concatenate([base[:-1], base[-2:-1], base[-1:]])[::-1]
        else:
            warm = base[-ORDER:].repeat(2) + np.tile(np.array([0, ratio // 2]), ORDER)
            prk = warm[:-1].repeat(2)[1:-1][::-1]
            plms = base[:-3][::-1]
        cumprod = alphas_cumprod(betas(self.config))
        return PNDMPlan(
            timesteps=np.concatenate([prk, plms]).astype(np.int64),
            prk_calls=len(prk),
            alphas_cumprod=cumprod,
            final_alpha_cumprod=np.float32(1.0) if self.config["set_alpha_to_one"] else cumprod[0],
            step_ratio=ratio,
        )

    def initial_state(self, plan: PNDMPlan) -> PNDMState:
        return PNDMState()

    def start_at(self, plan: PNDMPlan, skipped_steps: int) -> tuple[PNDMPlan, int]:
        """diffusers' PNDM counts its calls from the first one it is given, not by position in
        the schedule, so a late start is a shorter plan rather than a later index."""
        if skipped_steps == 0:
            return plan, 0
        if plan.prk_calls:
            raise InputError(
                "PNDM with its Runge-Kutta warm-up (skip_prk_steps false) cannot start part-way "
                "through the schedule; choose another scheduler for images with strength < 1"
            )
        shorter = PNDMPlan(
            timesteps=plan.timesteps[skipped_steps:],
            alphas_cumprod=plan.alphas_cumprod,
            final_alpha_cumprod=plan.final_alpha_cumprod,
            prk_calls=0,
            step_ratio=plan.step_ratio,
        )
        return shorter, 0

    def step(
        self,
        model_output: np.ndarray,
        i: int,
        sample: np.ndarray,
        plan: PNDMPlan,
        state: PNDMState,
        noise: Noise,
    ) -> tuple[np.ndarray, PNDMState]:
        if i < plan.prk_calls:
            return self._runge_kutta(model_output, i, sample, plan, state)
        return self._multistep(model_output, i, sample, plan, state)

    def _runge_kutta(
        self, output: np.ndarray, i: int, sample: np.ndarray, plan: PNDMPlan, state: PNDMState
    ) -> tuple[np.ndarray, PNDMState]:
        t = int(plan.timesteps[i])
        prev_t = t - (0 if i % 2 else plan.step_ratio // 2)
        t = int(plan.timesteps[i // 4 * 4])
        ets, cur_sample, accumulated = state.ets, state.cur_sample, state.cur_model_output
        if i % 4 == 0:
            accumulated = accumulated + 1 / 6 * output
            ets = (*ets, output)
            cur_sample = sample
        elif i % 4 in (1, 2):
            accumulated = accumulated + 1 / 3 * output
        else:
            output = accumulated + 1 / 6 * output
            accumulated = 0.0
        base = cur_sample if cur_sample is not None else sample
        prev = self._previous_sample(base, t, prev_t, output, plan)
        return prev, PNDMState(ets=ets, cur_sample=cur_sample, cur_model_output=accumulated)

    def _multistep(
        self, output: np.ndarray, i: int, sample: np.ndarray, plan: PNDMPlan, state: PNDMState
    ) -> tuple[np.ndarray, PNDMState]:
        t = int(plan.timesteps[i])
        prev_t = t - plan.step_ratio
        ets, cur_sample = state.ets, state.cur_sample
        if i != 1:
            ets = (*ets[-3:], output)
        else:
            # The second call re-evaluates the first timestep (a Heun-like correction).
            prev_t, t = t, t + plan.step_ratio
        if len(ets) == 1 and i == 0:
            cur_sample = sample
        elif len(ets) == 1 and i == 1:
            output = (output + ets[-1]) / 2
            sample, cur_sample = cur_sample, None  # type: ignore[assignment]
        elif len(ets) == 2:
            output = (3 * ets[-1] - ets[-2]) / 2
        elif len(ets) == 3:
            output = (23 * ets[-1] - 16 * ets[-2] + 5 * ets[-3]) / 12
        else:
            output = 1 / 24 * (55 * ets[-1] - 59 * ets[-2] + 37 * ets[-3] - 9 * ets[-4])
        prev = self._previous_sample(sample, t, prev_t, output, plan)
        return prev, PNDMState(
            ets=ets, cur_sample=cur_sample, cur_model_output=state.cur_model_output
        )

    def _previous_sample(
        self, sample: np.ndarray, t: int, prev_t: int, output: np.ndarray, plan: PNDMPlan
    ) -> np.ndarray:
        """Liu et al. 2022, eq. 11: the transfer from t to prev_t given a noise estimate."""
        alpha = plan.alphas_cumprod[t]
        alpha_prev = plan.alpha_bar(prev_t)
        beta, beta_prev = 1 - alpha, 1 - alpha_prev
        prediction = self.config["prediction_type"]
        if prediction == "v_prediction":
            output = alpha**0.5 * output + beta**0.5 * sample
        elif prediction != "epsilon":
            raise InputError(f"PNDM does not support prediction_type '{prediction}'")
        sample_coeff = (alpha_prev / alpha) ** 0.5
        denominator = alpha * beta_prev**0.5 + (alpha * beta * alpha_prev) ** 0.5
        prev = sample_coeff * sample - (alpha_prev - alpha) * output / denominator
        return prev.astype(np.float32, copy=False)
