"""UniPC: unified predictor-corrector multistep solver, Zhao et al. 2023 (B(h) = bh1 or bh2)."""

from __future__ import annotations

from dataclasses import dataclass
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


@dataclass(frozen=True)
class UniPCState(History):
    last_sample: np.ndarray | None = None  # the sample the last predictor started from
    last_order: int = 0


class UniPCScheduler(MultistepScheduler):
    """UniPC, Zhao et al. 2023: UniP predictor, UniC corrector reusing the next model call."""

    diffusers_name = "UniPCMultistepScheduler"
    defaults: ClassVar[dict[str, Any]] = {
        **MULTISTEP_DEFAULTS,
        "predict_x0": True,
        "solver_type": "bh2",
        "disable_corrector": [],
        "solver_p": None,
        "final_sigmas_type": "zero",
        "rescale_betas_zero_snr": False,
        "sigma_min": None,
        "sigma_max": None,
        "shift_terminal": None,
    }

    def __init__(self, model_config: dict[str, Any]) -> None:
        super().__init__(model_config)
        if self.config["solver_type"] in ("midpoint", "heun", "logrho"):
            self.config["solver_type"] = "bh2"  # as diffusers maps other solvers' configs
        if self.config["solver_type"] not in ("bh1", "bh2"):
            raise InputError(f"unsupported UniPC solver_type '{self.config['solver_type']}'")
        if self.config["solver_p"] is not None:
            raise InputError(
                "UniPC with a separate predictor scheduler (solver_p) is not supported"
            )

    def _final_sigma(self, converted: bool, sigmas: np.ndarray, smallest: np.float32) -> float:
        if self.config["final_sigmas_type"] == "zero":
            return 0.0
        return float(sigmas[-1]) if converted else float(smallest)

    def initial_state(self, plan: MultistepPlan) -> UniPCState:
        return UniPCState()

    def step(
        self,
        model_output: np.ndarray,
        i: int,
        sample: np.ndarray,
        plan: MultistepPlan,
        state: UniPCState,
        noise: Noise,
    ) -> tuple[np.ndarray, UniPCState]:
        predict_x0 = self.config["predict_x0"]
        converted = (
            self.data_prediction(model_output, sample, i, plan)
            if predict_x0
            else self.noise_prediction(model_output, sample, i, plan)
        )
        corrected = (
            i > 0
            and (i - 1) not in self.config["disable_corrector"]
            and state.last_sample is not None
        )
        if corrected:
            sample = self._correct(converted, i, state, sample, plan)
        history = self.remember(state, converted)
        order = int(self.config["solver_order"])
        if self.config["lower_order_final"]:
            order = min(order, len(plan.timesteps) - i)
        order = min(order, history.warmed + 1)
        prev = self._predict(history.outputs, i, sample, plan, order)
        warmed = self.warmed(history)
        return prev.astype(np.float32, copy=False), UniPCState(
            outputs=warmed.outputs, warmed=warmed.warmed, last_sample=sample, last_order=order
        )

    def _coefficients(
        self, h: np.float32, rks: list[np.float32], order: int
    ) -> tuple[np.ndarray, np.ndarray, np.float32, np.float32]:
        """R (powers of the step ratios), b, and the phi/B(h) factors of the UniPC update.

        A last step from sigma_min to sigma_min has h = 0; its NaN coefficients go unused, as the
        first-order update it takes needs none, so numpy is kept quiet about them."""
        with np.errstate(divide="ignore", invalid="ignore"):
            return self._coefficients_unchecked(h, rks, order)

    def _coefficients_unchecked(
        self, h: np.float32, rks: list[np.float32], order: int
    ) -> tuple[np.ndarray, np.ndarray, np.float32, np.float32]:
        hh = -h if self.config["predict_x0"] else h
        h_phi_1 = np.expm1(hh)
        h_phi_k = h_phi_1 / hh - np.float32(1)
        b_h = hh if self.config["solver_type"] == "bh1" else np.expm1(hh)
        ratios = np.array([*rks, np.float32(1)], dtype=np.float32)
        rows, b, factorial = [], [], 1
        for k in range(1, order + 1):
            rows.append(ratios ** np.float32(k - 1))
            b.append(h_phi_k * np.float32(factorial) / b_h)
            factorial *= k + 1
            h_phi_k = h_phi_k / hh - np.float32(1 / factorial)
        return np.array(rows, np.float32), np.array(b, np.float32), h_phi_1, b_h

    def _base(
        self,
        x: np.ndarray,
        t: int,
        s0: int,
        m0: np.ndarray,
        h_phi_1: np.float32,
        plan: MultistepPlan,
    ) -> tuple[np.ndarray, np.float32]:
        """The first-order part of the update from s0 to t, and the factor of the higher orders."""
        if self.config["predict_x0"]:
            scale = plan.alpha[t]
            return plan.sigma_t[t] / plan.sigma_t[s0] * x - scale * h_phi_1 * m0, scale
        scale = plan.sigma_t[t]
        return plan.alpha[t] / plan.alpha[s0] * x - scale * h_phi_1 * m0, scale

    def _differences(
        self,
        outputs: tuple[np.ndarray, ...],
        s0: int,
        h: np.float32,
        plan: MultistepPlan,
        order: int,
    ) -> tuple[list[np.float32], list[np.ndarray]]:
        """Step ratios back from s0 and the divided differences of the outputs along them."""
        rks, d1s = [], []
        for k in range(1, order):
            rk = (plan.lam[s0 - k] - plan.lam[s0]) / h
            rks.append(rk)
            d1s.append((outputs[-(k + 1)] - outputs[-1]) / rk)
        return rks, d1s

    def _predict(
        self,
        outputs: tuple[np.ndarray, ...],
        i: int,
        x: np.ndarray,
        plan: MultistepPlan,
        order: int,
    ) -> np.ndarray:
        h = plan.lam[i + 1] - plan.lam[i]
        rks, d1s = self._differences(outputs, i, h, plan, order)
        rows, b, h_phi_1, b_h = self._coefficients(h, rks, order)
        base, scale = self._base(x, i + 1, i, outputs[-1], h_phi_1, plan)
        if not d1s:
            return base
        rhos = (
            np.array([0.5], np.float32) if order == 2 else np.linalg.solve(rows[:-1, :-1], b[:-1])
        )
        residual = _weighted(rhos.astype(np.float32), d1s)
        return base - scale * b_h * residual

    def _correct(
        self,
        converted: np.ndarray,
        i: int,
        state: UniPCState,
        x_now: np.ndarray,
        plan: MultistepPlan,
    ) -> np.ndarray:
        order = state.last_order
        outputs = state.outputs
        h = plan.lam[i] - plan.lam[i - 1]
        rks, d1s = self._differences(outputs, i - 1, h, plan, order)
        rows, b, h_phi_1, b_h = self._coefficients(h, rks, order)
        assert state.last_sample is not None
        base, scale = self._base(state.last_sample, i, i - 1, outputs[-1], h_phi_1, plan)
        rhos = (
            np.array([0.5], np.float32)
            if order == 1
            else np.linalg.solve(rows, b).astype(np.float32)
        )
        residual = _weighted(rhos[:-1], d1s) if d1s else np.float32(0)
        return base - scale * b_h * (residual + rhos[-1] * (converted - outputs[-1]))


def _weighted(weights: np.ndarray, arrays: list[np.ndarray]) -> np.ndarray:
    return sum(w * a for w, a in zip(weights, arrays, strict=True))  # type: ignore[return-value]
