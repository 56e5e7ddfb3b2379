"""DPM-Solver multistep: DPM-Solver++ (Lu et al. 2022) and its SDE variant, orders 1 to 3."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from sdtrt.errors import InputError
from sdtrt.runtime.schedulers.common import Noise
from sdtrt.runtime.schedulers.multistep import (
    MULTISTEP_DEFAULTS,
    History,
    MultistepPlan,
    MultistepScheduler,
)

ALGORITHMS = ("dpmsolver++", "sde-dpmsolver++", "dpmsolver", "sde-dpmsolver")


class DPMSolverMultistepScheduler(MultistepScheduler):
    """DPM-Solver++(2M) and relatives, Lu et al. 2022 (data prediction, multistep)."""

    diffusers_name = "DPMSolverMultistepScheduler"
    defaults: ClassVar[dict[str, Any]] = {
        **MULTISTEP_DEFAULTS,
        "algorithm_type": "dpmsolver++",
        "solver_type": "midpoint",
        "euler_at_final": False,
        "use_lu_lambdas": False,
        "final_sigmas_type": "zero",
        "lambda_min_clipped": -float("inf"),
        "variance_type": None,
        "rescale_betas_zero_snr": False,
    }

    def __init__(self, model_config: dict[str, Any]) -> None:
        super().__init__(model_config)
        config = self.config
        if config["algorithm_type"] == "deis":  # diffusers maps DEIS configs onto DPM-Solver++
            config["algorithm_type"] = "dpmsolver++"
        if config["solver_type"] in ("logrho", "bh1", "bh2"):
            config["solver_type"] = "midpoint"
        if config["algorithm_type"] not in ALGORITHMS:
            raise InputError(f"unsupported algorithm_type '{config['algorithm_type']}'")
        if config["variance_type"] is not None:
            raise InputError("learned-variance models are not supported by DPM-Solver here")

    def _last_timestep(self, cumprod: np.ndarray) -> int:
        """Skip the timesteps whose lambda lies below lambda_min_clipped."""
        lam = np.log(np.sqrt(cumprod)) - np.log(np.sqrt(1 - cumprod))
        clipped = int(np.searchsorted(lam[::-1], self.config["lambda_min_clipped"], side="left"))
        return int(self.config["num_train_timesteps"]) - clipped

    def _round_karras_timesteps(self) -> bool:
        return self.config["beta_schedule"] != "squaredcos_cap_v2"

    def step(
        self,
        model_output: np.ndarray,
        i: int,
        sample: np.ndarray,
        plan: MultistepPlan,
        state: History,
        noise: Noise,
    ) -> tuple[np.ndarray, History]:
        config = self.config
        calls = len(plan.timesteps)
        final = i == calls - 1 and (
            config["euler_at_final"]
            or (config["lower_order_final"] and calls < 15)
            or config["final_sigmas_type"] == "zero"
        )
        second_last = i == calls - 2 and config["lower_order_final"] and calls < 15
        data = config["algorithm_type"] in ("dpmsolver++", "sde-dpmsolver++")
        converted = (
            self.data_prediction(model_output, sample, i, plan)
            if data
            else self.noise_prediction(model_output, sample, i, plan)
        )
        state = self.remember(state, converted)
        sde = config["algorithm_type"].startswith("sde")
        z = noise(model_output.shape) if sde else None
        order = int(config["solver_order"])
        # A last step from sigma_min to sigma_min has h = 0: the step ratio r0 = h_0 / h is then
        # infinite and its term vanishes, as in diffusers; numpy need not warn about it.
        with np.errstate(divide="ignore", invalid="ignore"):
            prev = self._update(state, order, final, second_last, i, sample, plan, z)
        return prev.astype(np.float32, copy=False), self.warmed(state)

    def _update(
        self,
        state: History,
        order: int,
        final: bool,
        second_last: bool,
        i: int,
        sample: np.ndarray,
        plan: MultistepPlan,
        z: np.ndarray | None,
    ) -> np.ndarray:
        if order == 1 or state.warmed < 1 or final:
            return self._first_order(state.outputs[-1], i, sample, plan, z)
        if order == 2 or state.warmed < 2 or second_last:
            return self._second_order(state.outputs, i, sample, plan, z)
        return self._third_order(state.outputs, i, sample, plan, z)

    def _first_order(
        self, m: np.ndarray, i: int, x: np.ndarray, plan: MultistepPlan, z: np.ndarray | None
    ) -> np.ndarray:
        alpha_t, sigma_t, sigma_s = plan.alpha[i + 1], plan.sigma_t[i + 1], plan.sigma_t[i]
        alpha_s = plan.alpha[i]
        h = plan.lam[i + 1] - plan.lam[i]
        one = np.float32(1.0)
        algorithm = self.config["algorithm_type"]
        if algorithm == "dpmsolver++":
            return sigma_t / sigma_s * x - alpha_t * (np.exp(-h) - one) * m
        if algorithm == "dpmsolver":
            return alpha_t / alpha_s * x - sigma_t * (np.exp(h) - one) * m
        if algorithm == "sde-dpmsolver++":
            return (
                sigma_t / sigma_s * np.exp(-h) * x
                + alpha_t * (1 - np.exp(np.float32(-2.0) * h)) * m
                + sigma_t * np.sqrt(one - np.exp(-2 * h)) * z
            )
        return (
            alpha_t / alpha_s * x
            - np.float32(2.0) * (sigma_t * (np.exp(h) - one)) * m
            + sigma_t * np.sqrt(np.exp(2 * h) - one) * z
        )

    def _second_order(
        self,
        ms: tuple[np.ndarray, ...],
        i: int,
        x: np.ndarray,
        plan: MultistepPlan,
        z: np.ndarray | None,
    ) -> np.ndarray:
        alpha_t, sigma_t = plan.alpha[i + 1], plan.sigma_t[i + 1]
        alpha_s0, sigma_s0 = plan.alpha[i], plan.sigma_t[i]
        h, h_0 = plan.lam[i + 1] - plan.lam[i], plan.lam[i] - plan.lam[i - 1]
        m0, m1 = ms[-1], ms[-2]
        r0 = h_0 / h
        d0, d1 = m0, np.float32(1.0) / r0 * (m0 - m1)
        one, half, two = np.float32(1.0), np.float32(0.5), np.float32(2.0)
        algorithm, midpoint = (
            self.config["algorithm_type"],
            self.config["solver_type"] == "midpoint",
        )
        if algorithm == "dpmsolver++":
            base = sigma_t / sigma_s0 * x - alpha_t * (np.exp(-h) - one) * d0
            if midpoint:
                return base - half * (alpha_t * (np.exp(-h) - one)) * d1
            return base + alpha_t * ((np.exp(-h) - one) / h + one) * d1
        if algorithm == "dpmsolver":
            base = alpha_t / alpha_s0 * x - sigma_t * (np.exp(h) - one) * d0
            if midpoint:
                return base - half * (sigma_t * (np.exp(h) - one)) * d1
            return base - sigma_t * ((np.exp(h) - one) / h - one) * d1
        if algorithm == "sde-dpmsolver++":
            decay = one - np.exp(-two * h)
            base = sigma_t / sigma_s0 * np.exp(-h) * x + alpha_t * decay * d0
            if midpoint:
                base = base + half * (alpha_t * decay) * d1
            else:
                base = base + alpha_t * (decay / (-two * h) + one) * d1
            return base + sigma_t * np.sqrt(one - np.exp(-2 * h)) * z
        base = alpha_t / alpha_s0 * x - two * (sigma_t * (np.exp(h) - one)) * d0
        if midpoint:
            base = base - sigma_t * (np.exp(h) - one) * d1
        else:
            base = base - two * (sigma_t * ((np.exp(h) - one) / h - one)) * d1
        return base + sigma_t * np.sqrt(np.exp(2 * h) - one) * z

    def _third_order(
        self,
        ms: tuple[np.ndarray, ...],
        i: int,
        x: np.ndarray,
        plan: MultistepPlan,
        z: np.ndarray | None,
    ) -> np.ndarray:
        alpha_t, sigma_t = plan.alpha[i + 1], plan.sigma_t[i + 1]
        alpha_s0, sigma_s0 = plan.alpha[i], plan.sigma_t[i]
        lam = plan.lam
        h, h_0, h_1 = lam[i + 1] - lam[i], lam[i] - lam[i - 1], lam[i - 1] - lam[i - 2]
        m0, m1, m2 = ms[-1], ms[-2], ms[-3]
        r0, r1 = h_0 / h, h_1 / h
        one, half, two = np.float32(1.0), np.float32(0.5), np.float32(2.0)
        d1_0, d1_1 = one / r0 * (m0 - m1), one / r1 * (m1 - m2)
        d1 = d1_0 + r0 / (r0 + r1) * (d1_0 - d1_1)
        d2 = one / (r0 + r1) * (d1_0 - d1_1)
        algorithm = self.config["algorithm_type"]
        if algorithm == "dpmsolver++":
            e = np.exp(-h) - one
            return (
                sigma_t / sigma_s0 * x
                - alpha_t * e * m0
                + alpha_t * (e / h + one) * d1
                - alpha_t * ((e + h) / h**2 - half) * d2
            )
        if algorithm == "dpmsolver":
            e = np.exp(h) - one
            return (
                alpha_t / alpha_s0 * x
                - sigma_t * e * m0
                - sigma_t * (e / h - one) * d1
                - sigma_t * ((e - h) / h**2 - half) * d2
            )
        if algorithm == "sde-dpmsolver++":
            decay = one - np.exp(-two * h)
            return (
                sigma_t / sigma_s0 * np.exp(-h) * x
                + alpha_t * decay * m0
                + alpha_t * (decay / (-two * h) + one) * d1
                + alpha_t * ((decay - two * h) / (two * h) ** 2 - half) * d2
                + sigma_t * np.sqrt(one - np.exp(-2 * h)) * z
            )
        raise InputError(
            "third-order DPM-Solver does not support sde-dpmsolver; use solver_order 2"
        )
