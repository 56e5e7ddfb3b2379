"""sdtrt's numpy copy of torch's CPU generator against torch.randn itself, bit for bit."""

import numpy as np
import pytest
import torch

from sdtrt.runtime.noise import NumpyNoise, TorchCPUGenerator, make_noise

SHAPES = [
    (1,),
    (3,),
    (15,),
    (16,),
    (17,),
    (31,),
    (100,),
    (1, 4, 64, 64),
    (2, 4, 96, 64),
    (4, 4, 7, 9),
]


@pytest.mark.parametrize("seed", [0, 1, 42, 1234, 2**31 - 1, 2**32 + 7, 2**63 + 11])
def test_randn_is_bit_exact_call_after_call(seed):
    reference = torch.Generator("cpu").manual_seed(seed)
    ours = TorchCPUGenerator(seed)
    for shape in SHAPES:  # small and large draws interleaved, as a sampler's calls are
        expected = torch.randn(shape, generator=reference).numpy()
        actual = ours.randn(shape)
        assert actual.dtype == np.float32 and actual.shape == shape
        assert np.array_equal(actual, expected), shape


def test_many_seeds_on_latent_shapes():
    mismatched = 0
    for seed in range(200):
        expected = torch.randn((2, 4, 8, 9), generator=torch.Generator().manual_seed(seed)).numpy()
        mismatched += int(np.count_nonzero(TorchCPUGenerator(seed).randn((2, 4, 8, 9)) != expected))
    assert mismatched == 0


def test_sources_by_name():
    assert isinstance(make_noise("torch", 1), TorchCPUGenerator)
    numpy_noise = make_noise("numpy", 1)
    assert isinstance(numpy_noise, NumpyNoise)
    assert np.array_equal(numpy_noise.randn((3, 2)), NumpyNoise(1).randn((3, 2)))
