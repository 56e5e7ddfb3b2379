"""Noise sources: torch's CPU generator reproduced bit for bit in numpy, or numpy's own.

`TorchCPUGenerator(seed).randn(shape)` returns exactly what
`torch.randn(shape, generator=torch.Generator("cpu").manual_seed(seed))` returns, call after
call, so a seed gives the same image here as in diffusers. torch draws float32 normals in two
ways, both reproduced:

- 16 values or more: uniforms from the Mersenne Twister, turned into normals by Box-Muller in
  blocks of 16 with single-precision Cephes log/sin/cos, as torch's AVX2 kernel computes them
  (its multiply-adds fused, as the compiler fuses them). A size that is not a multiple of 16
  redraws the last 16 values.
- fewer than 16: double-precision Box-Muller, one pair per two values, the second kept for the
  next call.
"""

from __future__ import annotations

import math
from typing import Literal, Protocol

import numpy as np

NoiseKind = Literal["torch", "numpy"]
NOISE_KINDS: tuple[NoiseKind, ...] = ("torch", "numpy")

_F32 = np.float32
_STATE_SIZE = 624  # Mersenne Twister MT19937
_BLOCK = 16  # torch's vectorised Box-Muller works on 8 pairs at a time
# Cephes' logf polynomial in (mantissa - 1), highest degree first, for Horner's rule.
_LOGF_POLY = (
    7.0376836292e-2,
    -1.1514610310e-1,
    1.1676998740e-1,
    -1.2420140846e-1,
    1.4249322787e-1,
    -1.6668057665e-1,
    2.0000714765e-1,
    -2.4999993993e-1,
    3.3333331174e-1,
)


class NoiseSource(Protocol):
    def randn(self, shape: tuple[int, ...]) -> np.ndarray:
        """Standard normal float32 noise of `shape`."""
        ...


class NumpyNoise:
    """numpy's PCG64 generator: fast, but its seeds mean nothing to diffusers."""

    def __init__(self, seed: int) -> None:
        self._rng = np.random.default_rng(seed)

    def randn(self, shape: tuple[int, ...]) -> np.ndarray:
        return self._rng.standard_normal(shape, dtype=np.float32)


def _mersenne_key(seed: int) -> np.ndarray:
    """MT19937's state for a 32-bit seed (Matsumoto and Nishimura's init_genrand)."""
    key = [seed & 0xFFFFFFFF]
    for i in range(1, _STATE_SIZE):
        previous = key[-1]
        key.append((1812433253 * (previous ^ (previous >> 30)) + i) & 0xFFFFFFFF)
    return np.array(key, dtype=np.uint32)


def _fma(a: np.ndarray, b: np.ndarray | np.float32, c: np.ndarray | np.float32) -> np.ndarray:
    """a * b + c rounded once to float32, as a fused multiply-add instruction does."""
    return (a.astype(np.float64) * np.float64(b) + c).astype(np.float32)


def _log(x: np.ndarray) -> np.ndarray:
    """Natural log of positive float32s by Cephes' logf polynomial, in float32 throughout."""
    bits = np.maximum(x, _F32(np.finfo(np.float32).tiny)).view(np.int32)
    exponent = ((bits >> 23) - 0x7F).astype(np.float32) + _F32(1)
    mantissa = ((bits & ~0x7F800000) | 0x3F000000).view(np.float32)  # in [0.5, 1)
    small = mantissa < _F32(0.707106781186547524)
    exponent = exponent - small.astype(np.float32)
    m = (mantissa - _F32(1)) + np.where(small, mantissa, _F32(0))
    m2 = m * m
    poly = np.full_like(m, _F32(_LOGF_POLY[0]))
    for c in _LOGF_POLY[1:]:
        poly = _fma(poly, m, _F32(c))
    poly = _fma(poly * m, m2, exponent * _F32(-2.12194440e-4))
    poly = poly - m2 * _F32(0.5)
    return _fma(exponent, _F32(0.693359375), m + poly)


def _sincos(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """sin and cos of non-negative float32s by Cephes' sinf/cosf polynomials."""
    octant = (x * _F32(1.27323954473516)).astype(np.int32)  # x / (pi / 4), truncated
    octant = (octant + 1) & ~1
    y = octant.astype(np.float32)
    # x - y * pi/4, with pi/4 split in three parts so that the reduction stays exact.
    for part in (-0.78515625, -2.4187564849853515625e-4, -3.77489497744594108e-8):
        x = _fma(y, _F32(part), x)
    z = x * x
    cos_poly = np.full_like(x, _F32(2.443315711809948e-5))
    for c in (-1.388731625493765e-3, 4.166664568298827e-2):
        cos_poly = _fma(cos_poly, z, _F32(c))
    cos_poly = _fma(cos_poly * z, z, -(z * _F32(0.5))) + _F32(1)
    sin_poly = np.full_like(x, _F32(-1.9515295891e-4))
    for c in (8.3321608736e-3, -1.6666654611e-1):
        sin_poly = _fma(sin_poly, z, _F32(c))
    sin_poly = _fma(sin_poly * z, x, x)
    swap = (octant & 2) != 0
    sin = np.where(swap, cos_poly, sin_poly)
    cos = np.where(swap, sin_poly, cos_poly)
    sin_sign = (octant & 4) << 29
    cos_sign = (~(octant - 2) & 4) << 29
    return (sin.view(np.int32) ^ sin_sign).view(np.float32), (cos.view(np.int32) ^ cos_sign).view(
        np.float32
    )


def _box_muller_blocks(uniforms: np.ndarray) -> np.ndarray:
    """Blocks of 16 uniforms to 16 normals: cosines in the first 8 slots, sines in the last."""
    blocks = uniforms.reshape(-1, _BLOCK)
    half = _BLOCK // 2
    radius = np.sqrt(_F32(-2) * _log(_F32(1) - blocks[:, :half]))
    sin, cos = _sincos(_F32(2 * math.pi) * blocks[:, half:])
    return np.concatenate([radius * cos, radius * sin], axis=1).reshape(-1)


class TorchCPUGenerator:
    """torch.Generator("cpu").manual_seed(seed), for torch.randn on float32 tensors."""

    def __init__(self, seed: int) -> None:
        self._bits = np.random.MT19937()
        # Position 624 makes the first draw regenerate the whole state, as torch's engine does.
        self._bits.state = {
            "bit_generator": "MT19937",
            "state": {"key": _mersenne_key(seed), "pos": _STATE_SIZE},
        }
        self._cached_normal: float | None = None

    def _uint32(self, count: int) -> np.ndarray:
        return self._bits.random_raw(count).astype(np.uint32)

    def _uniform_float32(self, count: int) -> np.ndarray:
        """[0, 1) with 24 random bits each."""
        return (self._uint32(count) & 0xFFFFFF).astype(np.float32) * _F32(2.0**-24)

    def _uniform_float64(self) -> float:
        """[0, 1) with 53 random bits, from two draws (the first is the high word)."""
        high, low = (int(v) for v in self._uint32(2))
        return (((high << 32) | low) & ((1 << 53) - 1)) * 2.0**-53

    def _normal_float64(self) -> float:
        if self._cached_normal is not None:
            value, self._cached_normal = self._cached_normal, None
            return value
        u1, u2 = self._uniform_float64(), self._uniform_float64()
        radius = math.sqrt(-2.0 * math.log1p(-u2))
        theta = 2.0 * math.pi * u1
        self._cached_normal = radius * math.sin(theta)
        return radius * math.cos(theta)

    def randn(self, shape: tuple[int, ...]) -> np.ndarray:
        count = math.prod(shape)
        if count < _BLOCK:
            return np.array([self._normal_float64() for _ in range(count)], np.float32).reshape(
                shape
            )
        uniforms = self._uniform_float32(count)
        whole = count - count % _BLOCK
        values = np.empty(count, dtype=np.float32)
        values[:whole] = _box_muller_blocks(uniforms[:whole])
        values[whole:] = uniforms[whole:]
        if whole < count:
            values[-_BLOCK:] = _box_muller_blocks(self._uniform_float32(_BLOCK))
        return values.reshape(shape)


def make_noise(kind: NoiseKind, seed: int) -> NoiseSource:
    return TorchCPUGenerator(seed) if kind == "torch" else NumpyNoise(seed)
