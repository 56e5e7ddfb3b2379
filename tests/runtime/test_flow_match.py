"""The flow-matching Euler sampler, step by step, against diffusers' FlowMatchEulerDiscreteScheduler
over the shifts, step counts and options SD 3 models ship with."""

import diffusers
import numpy as np
import pytest
import torch

from sdtrt.errors import InputError
from sdtrt.runtime.noise import TorchCPUGenerator
from sdtrt.runtime.schedulers import create_scheduler, resolve_scheduler_name
from sdtrt.runtime.schedulers.flow_match import MU, image_shift
from sdtrt.tolerances import SCHEDULER_TOLERANCE

# SD 3 / 3.5's scheduler_config.json: a fixed shift of 3.
SD3 = {"num_train_timesteps": 1000, "shift": 3.0}
CONFIGS = {
    "sd3": SD3,
    "no_shift": {"shift": 1.0},
    "shift_6": {"shift": 6.0},
    "dynamic": {"use_dynamic_shifting": True, "base_shift": 0.5, "max_shift": 1.15},
    "dynamic_linear": {"use_dynamic_shifting": True, "time_shift_type": "linear"},
    "terminal": {**SD3, "shift_terminal": 0.02},
    "karras": {**SD3, "use_karras_sigmas": True},
    "exponential": {**SD3, "use_exponential_sigmas": True},
    "stochastic": {**SD3, "stochastic_sampling": True},
}
STEPS = (1, 2, 4, 28, 50)
# A 1024x1024 image: 128x128 latents in 2x2 patches.
SEQ_LEN = 64 * 64


def _velocity(x, t):
    return (np.tanh(0.6 * x - np.float32(t) / 1000) * 1.1).astype(np.float32)


def _run(config, steps):
    mu = image_shift(config, SEQ_LEN) if config.get("use_dynamic_shifting") else None
    reference = diffusers.FlowMatchEulerDiscreteScheduler.from_config(config)
    reference.set_timesteps(steps, **({"mu": mu} if mu is not None else {}))
    ours = create_scheduler("flow_euler", {**config, MU: mu})
    plan = ours.plan(steps)
    np.testing.assert_allclose(ours.timesteps(plan), reference.timesteps.numpy(), rtol=1e-6)
    np.testing.assert_allclose(plan.sigmas, reference.sigmas.numpy(), rtol=1e-6, atol=1e-7)
    generator, noise = torch.Generator().manual_seed(3), TorchCPUGenerator(3)
    sample = torch.from_numpy(np.random.default_rng(0).standard_normal((2, 16, 8, 8), np.float32))
    worst = 0.0
    for i, t in enumerate(reference.timesteps):
        output = _velocity(sample.numpy(), float(t))
        ours_next, _ = ours.step(output, i, sample.numpy(), plan, None, noise.randn)
        sample = reference.step(
            torch.from_numpy(output), t, sample, generator=generator
        ).prev_sample
        worst = max(worst, float(np.max(np.abs(ours_next - sample.numpy()))))
    return worst


@pytest.mark.parametrize("variant", CONFIGS)
def test_step_by_step_parity(variant):
    for steps in STEPS:
        if variant == "terminal" and steps == 1:
            continue  # a stretch to the terminal sigma divides by zero at one step (diffusers too)
        assert _run(CONFIGS[variant], steps) <= SCHEDULER_TOLERANCE, steps


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_heun_step_by_step_parity(shift):
    config = {"num_train_timesteps": 1000, "shift": shift}
    for steps in STEPS:
        reference = diffusers.FlowMatchHeunDiscreteScheduler.from_config(config)
        reference.set_timesteps(steps)
        ours = create_scheduler("flow_heun", config)
        plan = ours.plan(steps)
        np.testing.assert_allclose(ours.timesteps(plan), reference.timesteps.numpy(), rtol=1e-6)
        np.testing.assert_allclose(plan.sigmas, reference.sigmas.numpy(), rtol=1e-6, atol=1e-7)
        sample = torch.from_numpy(
            np.random.default_rng(0).standard_normal((2, 16, 8, 8), np.float32)
        )
        state, worst = None, 0.0
        for i, t in enumerate(reference.timesteps):
            output = _velocity(sample.numpy(), float(t))
            ours_next, state = ours.step(output, i, sample.numpy(), plan, state, None)
            sample = reference.step(torch.from_numpy(output), t, sample).prev_sample
            worst = max(worst, float(np.max(np.abs(ours_next - sample.numpy()))))
        assert worst <= SCHEDULER_TOLERANCE, steps


def test_image_shift_is_diffusers_calculate_shift():
    from diffusers.pipelines.stable_diffusion_3.pipeline_stable_diffusion_3 import calculate_shift

    config = {"base_image_seq_len": 256, "max_image_seq_len": 4096, "base_shift": 0.5}
    for length in (256, 1024, 4096, 9216):
        expected = calculate_shift(length, 256, 4096, 0.5, 1.16)
        assert image_shift(config, length) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("begin", [0, 5, 12])
def test_noising_is_scale_noise(begin):
    reference = diffusers.FlowMatchEulerDiscreteScheduler.from_config(SD3)
    reference.set_timesteps(20)
    reference.set_begin_index(begin)
    ours = create_scheduler("flow_euler", SD3)
    plan = ours.plan(20)
    rng = np.random.default_rng(1)
    image, noise = (rng.standard_normal((1, 16, 4, 4), np.float32) for _ in range(2))
    expected = reference.scale_noise(
        torch.from_numpy(image), reference.timesteps[begin : begin + 1], torch.from_numpy(noise)
    )
    np.testing.assert_allclose(
        ours.add_noise(image, noise, begin, plan), expected.numpy(), atol=1e-6
    )


def test_names_and_refusals():
    assert resolve_scheduler_name("FlowMatchEulerDiscreteScheduler") == "flow_euler"
    assert resolve_scheduler_name("FlowMatchHeunDiscreteScheduler") == "flow_heun"
    with pytest.raises(InputError, match="shifts its schedule by image size"):
        create_scheduler("flow_euler", {"use_dynamic_shifting": True}).plan(4)
    with pytest.raises(InputError, match="at least 2 steps"):
        create_scheduler("flow_euler", CONFIGS["terminal"]).plan(1)
    with pytest.raises(InputError, match="beta sigmas"):
        create_scheduler("flow_euler", {"use_beta_sigmas": True})
