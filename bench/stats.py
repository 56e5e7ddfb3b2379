"""Latency summaries: percentiles over repeated runs."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from pydantic import BaseModel


class Latency(BaseModel):
    """Milliseconds over `samples` measurements."""

    samples: int
    mean_ms: float
    p50_ms: float
    p90_ms: float
    p99_ms: float

    @classmethod
    def of(cls, seconds: Sequence[float]) -> Latency:
        ms = np.asarray(seconds, dtype=np.float64) * 1e3
        p50, p90, p99 = np.percentile(ms, [50, 90, 99])
        return cls(
            samples=len(ms),
            mean_ms=round(float(ms.mean()), 3),
            p50_ms=round(float(p50), 3),
            p90_ms=round(float(p90), 3),
            p99_ms=round(float(p99), 3),
        )
