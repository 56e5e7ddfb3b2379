"""Classifier-free guidance as a UNet input: latent consistency models embed the scale."""

from __future__ import annotations

import numpy as np


def guidance_embedding(guidance_scale: np.ndarray, dim: int) -> np.ndarray:
    """The sinusoidal embedding of `guidance_scale - 1` (one per row) that a UNet with
    `time_cond_proj_dim` takes as `timestep_cond`, as diffusers' `get_guidance_scale_embedding`
    computes it in float32."""
    w = (np.asarray(guidance_scale, dtype=np.float32) - np.float32(1)) * np.float32(1000)
    half = dim // 2
    step = np.log(np.float32(10000)) / np.float32(half - 1)
    # exp in float64, rounded once: torch's float32 exp is correctly rounded where numpy's
    # float32 exp may be an ulp off, which angles of thousands of radians would magnify.
    exponents = np.arange(half, dtype=np.float32) * -step
    frequencies = np.exp(exponents.astype(np.float64)).astype(np.float32)
    angles = w[:, None] * frequencies[None, :]
    embedding = np.concatenate([np.sin(angles), np.cos(angles)], axis=1)
    if dim % 2:
        embedding = np.pad(embedding, ((0, 0), (0, 1)))
    return embedding.astype(np.float32)
