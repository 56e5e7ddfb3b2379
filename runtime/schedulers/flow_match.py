"""Flow matching's Euler sampler (rectified flow; Esser et al. 2024, Stable Diffusion 3): the
latents move in a straight line from noise (sigma 1) to the image (sigma 0), the model
predicting the velocity. Configured like diffusers' FlowMatchEulerDiscreteScheduler."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from sdtrt.errors import InputError
from sdtrt.runtime.schedulers.common import Noise, Scheduler, StateT, check_steps
from sdtrt.runtime.schedulers.sigmas import exponential_sigmas, karras_sigmas

# Not a key of diffusers' config: the pipeline passes `mu` to `set_timesteps` for models that
# shift their schedule by the image's size (use_dynamic_shifting); here the family puts it in the
# config (runtime/families/).
MU = "mu"


@dataclass(frozen=True)
class FlowPlan:
    timesteps: np.ndarray  # float32, sigma x num_train_timesteps, one per model call
    sigmas: np.ndarray  # float32, one per model call plus the final 0


def image_shift(config: Mapping[str, Any], image_seq_len: int) -> float:
    """`mu` for an image of `image_seq_len` patches: linear in the patch count between the
    config's base and max shifts, as diffusers' `calculate_shift`."""
    base_len = config.get("base_image_seq_len", 256)
    max_len = config.get("max_image_seq_len", 4096)
    base_shift = config.get("base_shift", 0.5)
    max_shift = config.get("max_shift", 1.16)
    slope = (max_shift - base_shift) / (max_len - base_len)
    return float(image_seq_len * slope + (base_shift - slope * base_len))


class FlowScheduler(Scheduler[FlowPlan, StateT]):
    """What flow-matching samplers share: latents from noise at sigma 1, with no scaling."""

    flow_matching = True

    def add_noise(
        self, original: np.ndarray, noise: np.ndarray, i: int, plan: FlowPlan
    ) -> np.ndarray:
        """`original` at call `i`'s noise level: a straight line to the noise, diffusers'
        `scale_noise`."""
        sigma = plan.sigmas[i]
        return (sigma * noise + (np.float32(1) - sigma) * original).astype(np.float32, copy=False)


class FlowMatchEulerScheduler(FlowScheduler[None]):
    """Euler steps along the predicted velocity: x <- x + (sigma_next - sigma) * v."""

    diffusers_name = "FlowMatchEulerDiscreteScheduler"
    defaults: ClassVar[dict[str, Any]] = {
        "num_train_timesteps": 1000,
        "shift": 1.0,
        "use_dynamic_shifting": False,
        "base_shift": 0.5,
        "max_shift": 1.15,
        "base_image_seq_len": 256,
        "max_image_seq_len": 4096,
        "invert_sigmas": False,
        "shift_terminal": None,
        "use_karras_sigmas": False,
        "use_exponential_sigmas": False,
        "use_beta_sigmas": False,
        "time_shift_type": "exponential",
        "stochastic_sampling": False,
    }

    def __init__(self, model_config: Mapping[str, Any]) -> None:
        super().__init__(model_config)
        self.mu = model_config.get(MU)
        if self.config["use_beta_sigmas"]:
            raise InputError(
                "this scheduler config asks for beta sigmas (use_beta_sigmas), which sdtrt's "
                "flow-matching scheduler does not offer; choose another --scheduler"
            )
        if self.config["invert_sigmas"]:
            raise InputError("inverted sigmas (invert_sigmas) are not supported")

    def _shift(self, sigmas: np.ndarray) -> np.ndarray:
        shift = self.config["shift"]
        return shift * sigmas / (1 + (shift - 1) * sigmas)

    def plan(self, num_inference_steps: int) -> FlowPlan:
        config = self.config
        check_steps(num_inference_steps, config)
        n = int(config["num_train_timesteps"])
        # The training schedule's ends, in float32 as diffusers builds them, bound the steps.
        training = np.linspace(1, n, n, dtype=np.float32)[::-1] / np.float32(n)
        if not config["use_dynamic_shifting"]:
            training = self._shift(training).astype(np.float32)
        high, low = float(training[0]), float(training[-1])
        sigmas = np.linspace(high * n, low * n, num_inference_steps) / n
        if config["use_dynamic_shifting"]:
            if self.mu is None:
                raise InputError("this model shifts its schedule by image size; give it `mu`")
            sigmas = self._time_shift(float(self.mu), sigmas)
        else:
            sigmas = self._shift(sigmas)
        if config["shift_terminal"]:
            if num_inference_steps < 2:  # the stretch divides by the last step's 1 - sigma = 0
                raise InputError("this model's schedule (shift_terminal) needs at least 2 steps")
            one_minus = 1 - sigmas
            sigmas = 1 - one_minus / (one_minus[-1] / (1 - config["shift_terminal"]))
        if config["use_karras_sigmas"]:
            sigmas = karras_sigmas({}, sigmas, num_inference_steps)
        elif config["use_exponential_sigmas"]:
            sigmas = exponential_sigmas({}, sigmas, num_inference_steps)
        sigmas32 = np.asarray(sigmas).astype(np.float32)
        return FlowPlan(
            timesteps=sigmas32 * np.float32(n),
            sigmas=np.concatenate([sigmas32, np.zeros(1, np.float32)]),
        )

    def _time_shift(self, mu: float, sigmas: np.ndarray) -> np.ndarray:
        if self.config["time_shift_type"] == "linear":
            return mu / (mu + (1 / sigmas - 1))
        return math.exp(mu) / (math.exp(mu) + (1 / sigmas - 1))

    def step(
        self,
        model_output: np.ndarray,
        i: int,
        sample: np.ndarray,
        plan: FlowPlan,
        state: None,
        noise: Noise,
    ) -> tuple[np.ndarray, None]:
        sigma, sigma_next = plan.sigmas[i], plan.sigmas[i + 1]
        if self.config["stochastic_sampling"]:
            # The clean image the velocity points to, noised afresh to the next level.
            x0 = sample - sigma * model_output
            prev = (np.float32(1) - sigma_next) * x0 + sigma_next * noise(sample.shape)
        else:
            prev = sample + (sigma_next - sigma) * model_output
        return prev.astype(np.float32, copy=False), None


@dataclass(frozen=True)
class HeunState:
    """What a Heun step's second call needs from its first."""

    derivative: np.ndarray
    dt: np.float32
    sample: np.ndarray


class FlowMatchHeunScheduler(FlowScheduler[HeunState | None]):
    """Heun's method along the predicted velocity (Karras et al. 2022, Algorithm 1 without
    churn, on flow matching's sigmas): an Euler step, then the mean of the velocities at both
    ends. Two model calls per step but the last."""

    diffusers_name = "FlowMatchHeunDiscreteScheduler"
    order = 2
    defaults: ClassVar[dict[str, Any]] = {"num_train_timesteps": 1000, "shift": 1.0}

    def plan(self, num_inference_steps: int) -> FlowPlan:
        check_steps(num_inference_steps, self.config)
        euler = FlowMatchEulerScheduler(self.config).plan(num_inference_steps)
        # Each sigma after the first is visited twice: by a step's second call and the next
        # step's first.
        sigmas = np.concatenate(
            [euler.sigmas[:1], np.repeat(euler.sigmas[1:-1], 2), euler.sigmas[-1:]]
        )
        timesteps = np.concatenate([euler.timesteps[:1], np.repeat(euler.timesteps[1:], 2)])
        return FlowPlan(timesteps=timesteps, sigmas=sigmas)

    def step(
        self,
        model_output: np.ndarray,
        i: int,
        sample: np.ndarray,
        plan: FlowPlan,
        state: HeunState | None,
        noise: Noise,
    ) -> tuple[np.ndarray, HeunState | None]:
        if state is None:  # the step's first call: an Euler step, remembered
            sigma, sigma_next = plan.sigmas[i], plan.sigmas[i + 1]
            denoised = sample - model_output * sigma
            derivative = (sample - denoised) / sigma
            dt = sigma_next - sigma
            prev = sample + derivative * dt
            return prev.astype(np.float32, copy=False), HeunState(derivative, dt, sample)
        sigma_next = plan.sigmas[i]
        denoised = sample - model_output * sigma_next
        derivative = (state.derivative + (sample - denoised) / sigma_next) * np.float32(0.5)
        prev = state.sample + derivative * state.dt
        return prev.astype(np.float32, copy=False), None
