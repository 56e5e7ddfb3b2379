"""LMS: linear multistep on sigma, the fourth-order Adams method of k-diffusion's sample_lms."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from sdtrt.runtime.schedulers.common import NOISE_SCHEDULE_DEFAULTS, Noise
from sdtrt.runtime.schedulers.sigmas import SigmaPlan, SigmaScheduler, sigma_plan

ORDER = 4


@dataclass(frozen=True)
class LMSPlan(SigmaPlan):
    coefficients: tuple[np.ndarray, ...]  # per step: weights of the newest derivative first


def lms_coefficients(sigmas: np.ndarray, i: int, order: int) -> np.ndarray:
    """Integrals over [sigma_i, sigma_i+1] of the Lagrange basis through the last `order` sigmas.

    The basis polynomials are integrated exactly (diffusers integrates them numerically)."""
    nodes = [float(sigmas[i - k]) for k in range(order)]
    result = []
    for current in range(order):
        basis = np.polynomial.Polynomial([1.0])
        for k, node in enumerate(nodes):
            if k != current:
                basis = basis * np.polynomial.Polynomial([-node, 1.0]) / (nodes[current] - node)
        integral = basis.integ()
        result.append(integral(float(sigmas[i + 1])) - integral(float(sigmas[i])))
    return np.array(result)


class LMSScheduler(SigmaScheduler[LMSPlan, tuple[np.ndarray, ...]]):
    """Linear multistep (Adams-Bashforth on sigma), k-diffusion's sample_lms, order 4."""

    diffusers_name = "LMSDiscreteScheduler"
    defaults: ClassVar[dict[str, Any]] = {
        **NOISE_SCHEDULE_DEFAULTS,
        "use_karras_sigmas": False,
        "use_exponential_sigmas": False,
        "use_beta_sigmas": False,
        "prediction_type": "epsilon",
        "timestep_spacing": "linspace",
        "steps_offset": 0,
    }

    def plan(self, num_inference_steps: int) -> LMSPlan:
        base = sigma_plan(self.config, num_inference_steps)
        coefficients = tuple(
            lms_coefficients(base.sigmas, i, min(i + 1, ORDER)) for i in range(num_inference_steps)
        )
        return LMSPlan(timesteps=base.timesteps, sigmas=base.sigmas, coefficients=coefficients)

    def initial_state(self, plan: LMSPlan) -> tuple[np.ndarray, ...]:
        return ()

    def step(
        self,
        model_output: np.ndarray,
        i: int,
        sample: np.ndarray,
        plan: LMSPlan,
        state: tuple[np.ndarray, ...],
        noise: Noise,
    ) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
        sigma = plan.sigmas[i]
        derivative = (sample - self.denoised(model_output, sample, sigma)) / sigma
        derivatives = (*state, derivative)[-ORDER:]
        update = sum(
            float(c) * d for c, d in zip(plan.coefficients[i], reversed(derivatives), strict=False)
        )
        prev = sample + update
        return prev.astype(np.float32, copy=False), derivatives
