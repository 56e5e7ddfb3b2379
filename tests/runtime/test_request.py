import math

import pytest

from sdtrt.engine.manifest import read_manifest
from sdtrt.errors import InputError
from sdtrt.runtime.arguments import make_request


@pytest.fixture(scope="module")
def manifest(tiny_engine_dir):
    return read_manifest(tiny_engine_dir)


def request(manifest, **overrides):
    arguments = dict(
        prompt="a cat",
        negative_prompt=None,
        height=None,
        width=None,
        num_inference_steps=10,
        guidance_scale=7.5,
        seed=None,
        scheduler=None,
        num_images_per_prompt=1,
    )
    arguments.update(overrides)
    return make_request(manifest, "PNDMScheduler", **arguments)


def test_unknown_default_scheduler_asks_for_one(manifest):
    with pytest.raises(InputError, match="the model's own scheduler, KDPM2DiscreteScheduler, is"):
        make_request(
            manifest, "KDPM2DiscreteScheduler", "a cat", None, None, None, 5, 7.5, 1, None, 1
        )


def test_random_seeds_are_32_bit_and_typed_ones_64(manifest):
    seeds = {request(manifest).seed for _ in range(200)}
    assert all(0 <= seed < 2**32 for seed in seeds) and len(seeds) > 190
    assert max(seeds) >= 2**31  # drawn from all 32 bits, not fewer
    assert request(manifest, seed=2**64 - 1).seed == 2**64 - 1


def test_defaults(manifest):
    made = request(manifest)
    assert (made.height, made.width) == (64, 64)
    assert made.scheduler == "pndm" and made.guided and made.batch == 1
    assert made.negative_prompts == [""] and 0 <= made.seed < 2**63


def test_negative_prompts_pair_with_prompts(manifest):
    made = request(manifest, prompt=["a", "b"], negative_prompt="blurry", num_images_per_prompt=2)
    assert made.negative_prompts == ["blurry", "blurry"] and made.batch == 4
    made = request(manifest, prompt=["a", "b"], negative_prompt=["x", "y"])
    assert made.negative_prompts == ["x", "y"]
    assert not request(manifest, guidance_scale=1.0).guided


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (dict(height=63), "height must be a positive multiple of 2, got 63"),
        (dict(width=0), "width must be a positive multiple of 2, got 0"),
        (dict(height=130), "130x64 is outside the built range (32..128 high and 32..128 wide)"),
        (dict(num_inference_steps=0), "steps must be a whole number of at least 1, got 0"),
        (dict(guidance_scale=math.nan), "guidance must be a finite number, got nan"),
        (dict(guidance_scale=math.inf), "guidance must be a finite number, got inf"),
        (dict(scheduler="dpm++"), "unknown scheduler 'dpm++'; choose one of: ddim, ddpm, deis"),
        (dict(noise="cuda"), "unknown noise source 'cuda'; choose one of: torch, numpy"),
        (dict(num_images_per_prompt=5), "5 images per call exceeds the built maximum of 4"),
        (dict(num_images_per_prompt=0), "images per prompt must be at least 1"),
        (dict(prompt=[]), "prompt must not be an empty list"),
        (dict(prompt=["a", 3]), "prompt must be a string or a list of strings"),
        (dict(prompt=["a", "b"], negative_prompt=["x"]), "got 1 negative prompts for 2 prompts"),
        (dict(seed=-1), "seed must be between 0 and 2**64 - 1"),
    ],
)
def test_bad_requests(manifest, overrides, message):
    with pytest.raises(InputError) as error:
        request(manifest, **overrides)
    assert message in str(error.value)
