"""Every numpy scheduler, step by step, against its diffusers class on identical inputs."""

import inspect
import itertools

import diffusers
import numpy as np
import pytest
import torch

from sdtrt.errors import InputError
from sdtrt.runtime.schedulers import SCHEDULERS, create_scheduler, resolve_scheduler_name
from sdtrt.tolerances import SCHEDULER_TOLERANCE

SD1 = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "clip_sample": False,
}
VARIANTS = {
    "sd1": {},
    "v_prediction": {"prediction_type": "v_prediction"},
    "linspace": {"timestep_spacing": "linspace"},
    "trailing": {"timestep_spacing": "trailing"},
    "trailing_v": {"timestep_spacing": "trailing", "prediction_type": "v_prediction"},
    "linear_betas": {"beta_schedule": "linear", "beta_start": 0.0001, "beta_end": 0.02},
    "cosine_betas": {"beta_schedule": "squaredcos_cap_v2"},
    # Zero terminal SNR is meant for v-prediction; with epsilon its last step divides by zero.
    "zero_snr": {
        "rescale_betas_zero_snr": True,
        "timestep_spacing": "trailing",
        "prediction_type": "v_prediction",
    },
    "clip_sample": {"clip_sample": True, "set_alpha_to_one": True},
    "prk": {"skip_prk_steps": False},
    "karras": {"use_karras_sigmas": True},
    "sample_prediction": {"prediction_type": "sample"},
}
STEPS = (1, 2, 7, 50)


def _supported(name, variant, steps):
    config = VARIANTS[variant]
    if name == "pndm":
        if config.get("prediction_type") == "sample" or "rescale_betas_zero_snr" in config:
            return False  # diffusers' PNDM has neither
        if variant == "prk" and steps < 4:
            return False  # the Runge-Kutta warm-up needs four steps
    return True


def _model(x, t):
    """A stand-in denoiser: smooth, bounded, and dependent on both input and timestep."""
    return (np.tanh(0.7 * x + np.float32(t) / 1000) * 0.9).astype(np.float32)


CASES = [
    (name, variant, steps)
    for name, variant, steps in itertools.product(SCHEDULERS, VARIANTS, STEPS)
    if _supported(name, variant, steps)
]


@pytest.mark.parametrize(("name", "variant", "steps"), CASES)
def test_step_by_step_parity(name, variant, steps):
    config = {**SD1, **VARIANTS[variant]}
    reference = getattr(diffusers, SCHEDULERS[name].diffusers_name).from_config(config)
    reference.set_timesteps(steps)
    ours = create_scheduler(name, config)
    plan = ours.plan(steps)
    timesteps = ours.timesteps(plan)
    np.testing.assert_allclose(timesteps, reference.timesteps.numpy(), rtol=1e-6, atol=1e-4)
    assert ours.init_noise_sigma(plan) == pytest.approx(float(reference.init_noise_sigma), rel=1e-6)

    sample = torch.from_numpy(
        np.random.default_rng(0).standard_normal((2, 4, 8, 8), dtype=np.float32)
    )
    sample = sample * reference.init_noise_sigma
    state = ours.initial_state(plan)
    worst = 0.0
    for i, t in enumerate(reference.timesteps):
        model_input = reference.scale_model_input(sample, t)
        ours_input = ours.scale_model_input(sample.numpy(), i, plan)
        worst = max(worst, _error(sample.numpy(), model_input.numpy(), ours_input))
        output = _model(model_input.numpy(), float(t))
        ours_next, state = ours.step(output, i, sample.numpy(), plan, state, noise=None)
        previous, sample = sample, reference.step(torch.from_numpy(output), t, sample).prev_sample
        worst = max(worst, _error(previous.numpy(), sample.numpy(), ours_next))
    assert worst <= SCHEDULER_TOLERANCE


def _error(given, expected, actual):
    """Error relative to the step's largest operand (and at least 1): float32 rounds relative
    to magnitude, so a step from sigma 4096 down to 1.8 keeps only ~1e-3 absolute accuracy."""
    assert actual.dtype == np.float32 and actual.shape == expected.shape
    assert np.isfinite(expected).all() and np.isfinite(actual).all()
    scale = max(1.0, float(np.max(np.abs(expected))), float(np.max(np.abs(given))))
    return float(np.max(np.abs(actual.astype(np.float64) - expected))) / scale


@pytest.mark.parametrize("name", SCHEDULERS)
def test_defaults_are_diffusers_defaults(name):
    cls = SCHEDULERS[name]
    signature = inspect.signature(getattr(diffusers, cls.diffusers_name).__init__)
    theirs = {k: p.default for k, p in signature.parameters.items() if k != "self"}
    assert cls.defaults == theirs


def test_names_and_aliases():
    assert resolve_scheduler_name("EulerDiscreteScheduler") == "euler"
    assert resolve_scheduler_name(" DDIM ") == "ddim"
    assert resolve_scheduler_name("PNDMScheduler") == "pndm"
    with pytest.raises(
        InputError, match="unknown scheduler 'dpm'; choose one of: ddim, euler, pndm"
    ):
        resolve_scheduler_name("dpm")


def test_steps_are_checked():
    scheduler = create_scheduler("ddim", SD1)
    with pytest.raises(InputError, match="at least 1"):
        scheduler.plan(0)
    with pytest.raises(InputError, match="at most 1000"):
        scheduler.plan(1001)
