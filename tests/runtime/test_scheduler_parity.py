"""Every numpy scheduler, step by step, against its diffusers class on identical inputs.

At each model call both get the same sample and model output; stochastic samplers draw their
noise from generators seeded alike (diffusers' torch.Generator, sdtrt's bit-exact numpy copy),
so any difference is the scheduler's.
"""

import inspect

import diffusers
import numpy as np
import pytest
import torch

from sdtrt.errors import InputError
from sdtrt.export.presets import SD1_SCHEDULER
from sdtrt.runtime.noise import TorchCPUGenerator
from sdtrt.runtime.schedulers import (
    SCHEDULERS,
    create_scheduler,
    resolve_scheduler_name,
    scheduler_names,
)
from sdtrt.tolerances import SCHEDULER_TOLERANCE

SD1 = SD1_SCHEDULER
COMMON = {
    "sd1": {},
    "v_prediction": {"prediction_type": "v_prediction"},
    "leading": {"timestep_spacing": "leading"},
    "linspace": {"timestep_spacing": "linspace"},
    "trailing": {"timestep_spacing": "trailing"},
    "trailing_v": {"timestep_spacing": "trailing", "prediction_type": "v_prediction"},
    "karras": {"use_karras_sigmas": True},
    "linear_betas": {"beta_schedule": "linear", "beta_start": 0.0001, "beta_end": 0.02},
    "cosine_betas": {"beta_schedule": "squaredcos_cap_v2"},
}
# Each class's own options. (UniPC's bh1 and noise-prediction forms divide by zero at a final
# sigma of 0 in diffusers too, so they are checked ending at sigma_min.)
SPECIFIC = {
    "DDIMScheduler": {
        "clip_sample": {"clip_sample": True, "set_alpha_to_one": True},
        "zero_snr": {
            "rescale_betas_zero_snr": True,
            "timestep_spacing": "trailing",
            "prediction_type": "v_prediction",
        },
        "sample_prediction": {"prediction_type": "sample"},
    },
    "PNDMScheduler": {"prk": {"skip_prk_steps": False}},
    "EulerDiscreteScheduler": {
        "sigma_min": {"final_sigmas_type": "sigma_min"},
        "exponential": {"use_exponential_sigmas": True},
        "zero_snr": {
            "rescale_betas_zero_snr": True,
            "timestep_spacing": "trailing",
            "prediction_type": "v_prediction",
        },
    },
    "EulerAncestralDiscreteScheduler": {
        "zero_snr": {
            "rescale_betas_zero_snr": True,
            "timestep_spacing": "trailing",
            "prediction_type": "v_prediction",
        },
    },
    "HeunDiscreteScheduler": {"clip_sample": {"clip_sample": True}},
    "DPMSolverMultistepScheduler": {
        "order_3": {"solver_order": 3},
        "heun": {"solver_type": "heun"},
        "noise_prediction": {"algorithm_type": "dpmsolver", "final_sigmas_type": "sigma_min"},
        "sigma_min": {"final_sigmas_type": "sigma_min"},
        "full_order_final": {"lower_order_final": False},
        "euler_at_final": {"euler_at_final": True},
        "lu_lambdas": {"use_lu_lambdas": True},
        "sde_order_3": {"algorithm_type": "sde-dpmsolver++", "solver_order": 3},
        "sde_heun": {"algorithm_type": "sde-dpmsolver++", "solver_type": "heun"},
    },
    "UniPCMultistepScheduler": {
        "bh1": {"solver_type": "bh1", "final_sigmas_type": "sigma_min"},
        "order_3": {"solver_order": 3},
        "noise_prediction": {"predict_x0": False, "final_sigmas_type": "sigma_min"},
        "karras_sigma_min": {"use_karras_sigmas": True, "final_sigmas_type": "sigma_min"},
    },
    "DEISMultistepScheduler": {
        "order_3": {"solver_order": 3},
        "full_order_final": {"lower_order_final": False},
    },
    "DDPMScheduler": {
        "fixed_small_log": {"variance_type": "fixed_small_log"},
        "fixed_large": {"variance_type": "fixed_large"},
        "clip_sample": {"clip_sample": True},
    },
}
STEPS = (1, 2, 7, 50)
# diffusers itself fails these: DPM-Solver keeps Karras timesteps fractional on a cosine
# schedule, then truncates them to duplicates and indexes past its sigmas.
BROKEN_IN_DIFFUSERS = {("dpmpp_2m_karras", "cosine_betas")}
CASES = [
    (name, variant)
    for name, choice in SCHEDULERS.items()
    if not choice.cls.flow_matching  # on a schedule of their own: tests/runtime/test_flow_match.py
    for variant in {**COMMON, **SPECIFIC.get(choice.cls.diffusers_name, {})}
    if (name, variant) not in BROKEN_IN_DIFFUSERS
]


def _variant(name, variant):
    return {**COMMON, **SPECIFIC.get(SCHEDULERS[name].cls.diffusers_name, {})}[variant]


def _model(x, t):
    """A stand-in denoiser: smooth, bounded, and dependent on both input and timestep."""
    return (np.tanh(0.7 * x + np.float32(t) / 1000) * 0.9).astype(np.float32)


def _error(given, expected, actual):
    """Error relative to the step's largest operand (and at least 1): float32 rounds relative
    to magnitude, so a step from sigma 4096 down to 1.8 keeps only ~1e-3 absolute accuracy."""
    assert actual.dtype == np.float32 and actual.shape == expected.shape
    assert np.isfinite(expected).all() and np.isfinite(actual).all()
    scale = max(1.0, float(np.max(np.abs(expected))), float(np.max(np.abs(given))))
    return float(np.max(np.abs(actual.astype(np.float64) - expected))) / scale


def _run(name, config, steps):
    """The largest step error over a whole run."""
    choice = SCHEDULERS[name]
    reference = getattr(diffusers, choice.cls.diffusers_name).from_config(
        {**config, **choice.overrides}
    )
    reference.set_timesteps(steps)
    ours = create_scheduler(name, config)
    plan = ours.plan(steps)
    np.testing.assert_allclose(
        ours.timesteps(plan), reference.timesteps.numpy(), rtol=1e-6, atol=1e-4
    )
    assert ours.init_noise_sigma(plan) == pytest.approx(float(reference.init_noise_sigma), rel=1e-6)
    takes_generator = "generator" in inspect.signature(reference.step).parameters
    generator, noise = torch.Generator().manual_seed(5), TorchCPUGenerator(5)
    sample = torch.from_numpy(
        np.random.default_rng(0).standard_normal((2, 4, 8, 8), dtype=np.float32)
    )
    sample = sample * reference.init_noise_sigma
    state = ours.initial_state(plan)
    worst = 0.0
    for i, t in enumerate(reference.timesteps):
        model_input = reference.scale_model_input(sample, t)
        worst = max(
            worst,
            _error(
                sample.numpy(), model_input.numpy(), ours.scale_model_input(sample.numpy(), i, plan)
            ),
        )
        output = _model(model_input.numpy(), float(t))
        ours_next, state = ours.step(output, i, sample.numpy(), plan, state, noise.randn)
        extra = {"generator": generator} if takes_generator else {}
        previous, sample = (
            sample,
            reference.step(torch.from_numpy(output), t, sample, **extra).prev_sample,
        )
        worst = max(worst, _error(previous.numpy(), sample.numpy(), ours_next))
    return worst


@pytest.mark.parametrize(("name", "variant"), CASES)
def test_step_by_step_parity(name, variant):
    config = {**SD1, **_variant(name, variant)}
    if name == "pndm" and variant == "prk":
        steps = [s for s in STEPS if s >= 4]  # the Runge-Kutta warm-up needs four steps
    else:
        steps = STEPS
    for count in steps:
        assert _run(name, config, count) <= SCHEDULER_TOLERANCE, count


@pytest.mark.parametrize("name", sorted({c.cls.diffusers_name for c in SCHEDULERS.values()}))
def test_defaults_are_diffusers_defaults(name):
    cls = next(c.cls for c in SCHEDULERS.values() if c.cls.diffusers_name == name)
    signature = inspect.signature(getattr(diffusers, name).__init__)
    theirs = {k: p.default for k, p in signature.parameters.items() if k != "self"}
    assert cls.defaults == theirs


def test_names_and_aliases():
    assert len(scheduler_names()) == 15
    assert resolve_scheduler_name("EulerDiscreteScheduler") == "euler"
    assert resolve_scheduler_name("eulerancestraldiscretescheduler") == "euler_a"
    assert resolve_scheduler_name(" DDIM ") == "ddim"
    # The class takes the model's own DPM-Solver settings, unlike the named variants.
    assert resolve_scheduler_name("DPMSolverMultistepScheduler") == "DPMSolverMultistepScheduler"
    with pytest.raises(
        InputError, match="unknown scheduler 'dpm'; choose one of: ddim, ddpm, deis"
    ):
        resolve_scheduler_name("dpm")


def test_named_variants_fix_their_options():
    karras = {**SD1, "use_karras_sigmas": True, "algorithm_type": "sde-dpmsolver++"}
    assert create_scheduler("dpmpp_2m", karras).config["use_karras_sigmas"] is False
    assert create_scheduler("dpmpp_2m", karras).config["algorithm_type"] == "dpmsolver++"
    assert create_scheduler("dpmpp_2m_karras", SD1).config["use_karras_sigmas"] is True
    assert create_scheduler("dpmpp_sde", SD1).config["algorithm_type"] == "sde-dpmsolver++"
    assert (
        create_scheduler("DPMSolverMultistepScheduler", karras).config["use_karras_sigmas"] is True
    )


@pytest.mark.parametrize(
    ("name", "steps", "message"),
    [
        ("ddim", 0, "at least 1"),
        ("euler", 1001, "at most 1000"),
        ("lcm", 51, "LCM takes at most 50 steps"),
    ],
)
def test_steps_are_checked(name, steps, message):
    with pytest.raises(InputError, match=message):
        create_scheduler(name, SD1).plan(steps)


def test_unsupported_options_are_refused():
    with pytest.raises(InputError, match="use_beta_sigmas is not supported"):
        create_scheduler("euler", {**SD1, "use_beta_sigmas": True}).plan(5)
    with pytest.raises(InputError, match="variance_type 'learned_range' is not supported"):
        create_scheduler("ddpm", {**SD1, "variance_type": "learned_range"})
