"""DEIS: diffusion exponential integrator sampler, Zhang and Chen 2022 (log-rho multistep)."""

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


def _second_order_weight(t: np.float32, b: np.float32, c: np.float32) -> np.float32:
    """Antiderivative, at t, of the Lagrange basis through log-rho nodes b and c."""
    return t * (-np.log(c) + np.log(t) - 1) / (np.log(b) - np.log(c))


def _third_order_weight(t: np.float32, b: np.float32, c: np.float32, d: np.float32) -> np.float32:
    lt, lc, ld = np.log(t), np.log(c), np.log(d)
    numerator = t * (lc * (ld - lt + 1) - ld * lt + ld + lt**2 - 2 * lt + 2)
    return numerator / ((np.log(b) - lc) * (np.log(b) - ld))


class DEISScheduler(MultistepScheduler):
    """DEIS, Zhang and Chen 2022: exponential integrator with polynomial extrapolation in
    log rho (rho = sigma_t / alpha_t), orders 1 to 3."""

    diffusers_name = "DEISMultistepScheduler"
    defaults: ClassVar[dict[str, Any]] = {
        **MULTISTEP_DEFAULTS,
        "algorithm_type": "deis",
        "solver_type": "logrho",
    }

    def __init__(self, model_config: dict[str, Any]) -> None:
        super().__init__(model_config)
        if self.config["algorithm_type"] in ("dpmsolver", "dpmsolver++"):
            self.config["algorithm_type"] = "deis"  # as diffusers maps DPM-Solver configs
        if self.config["solver_type"] in ("midpoint", "heun", "bh1", "bh2"):
            self.config["solver_type"] = "logrho"
        if self.config["algorithm_type"] != "deis" or self.config["solver_type"] != "logrho":
            raise InputError("DEIS supports only algorithm_type 'deis' with solver_type 'logrho'")

    def _final_sigma(self, converted: bool, sigmas: np.ndarray, smallest: np.float32) -> float:
        # DEIS always ends on the smallest sigma it has, never on zero.
        return float(sigmas[-1]) if converted else float(smallest)

    def step(
        self,
        model_output: np.ndarray,
        i: int,
        sample: np.ndarray,
        plan: MultistepPlan,
        state: History,
        noise: Noise,
    ) -> tuple[np.ndarray, History]:
        calls = len(plan.timesteps)
        short = self.config["lower_order_final"] and calls < 15
        x0 = self.data_prediction(model_output, sample, i, plan)
        epsilon = (sample - plan.alpha[i] * x0) / plan.sigma_t[i]
        state = self.remember(state, epsilon)
        order = int(self.config["solver_order"])
        ms = state.outputs
        alpha_t, alpha_s0 = plan.alpha[i + 1], plan.alpha[i]
        if order == 1 or state.warmed < 1 or (short and i == calls - 1):
            h = plan.lam[i + 1] - plan.lam[i]
            prev = (
                alpha_t / alpha_s0 * sample
                - plan.sigma_t[i + 1] * (np.exp(h) - np.float32(1)) * ms[-1]
            )
        else:
            rho = plan.sigma_t / plan.alpha
            rho_t, rho_s0, rho_s1 = rho[i + 1], rho[i], rho[i - 1]
            if order == 2 or state.warmed < 2 or (short and i == calls - 2):
                f = _second_order_weight
                coef1 = f(rho_t, rho_s0, rho_s1) - f(rho_s0, rho_s0, rho_s1)
                coef2 = f(rho_t, rho_s1, rho_s0) - f(rho_s0, rho_s1, rho_s0)
                prev = alpha_t * (sample / alpha_s0 + coef1 * ms[-1] + coef2 * ms[-2])
            else:
                rho_s2 = rho[i - 2]
                g = _third_order_weight
                coef1 = g(rho_t, rho_s0, rho_s1, rho_s2) - g(rho_s0, rho_s0, rho_s1, rho_s2)
                coef2 = g(rho_t, rho_s1, rho_s2, rho_s0) - g(rho_s0, rho_s1, rho_s2, rho_s0)
                coef3 = g(rho_t, rho_s2, rho_s0, rho_s1) - g(rho_s0, rho_s2, rho_s0, rho_s1)
                prev = alpha_t * (
                    sample / alpha_s0 + coef1 * ms[-1] + coef2 * ms[-2] + coef3 * ms[-3]
                )
        return prev.astype(np.float32, copy=False), self.warmed(state)
