"""What the service adds around the pipeline call it runs: queue hand-off, PNG, wake-up."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

from sdtrt.serve.jobs import GenerationParams, JobState
from sdtrt.serve.service import Service


@dataclass(frozen=True)
class Overhead:
    runs: int
    median_ms: float  # submit to the caller waking with the result, less the pipeline call
    p95_ms: float
    median_encode_ms: float  # PNG encoding, included in the figures above
    median_pipeline_ms: float

    def describe(self) -> str:
        return (
            f"service overhead over {self.runs} requests: median {self.median_ms:.2f} ms, "
            f"p95 {self.p95_ms:.2f} ms (PNG encoding {self.median_encode_ms:.2f} ms of it), "
            f"around a {self.median_pipeline_ms:.1f} ms pipeline call"
        )


def measure_overhead(service: Service, params: GenerationParams, runs: int = 50) -> Overhead:
    """Submit `runs` jobs one after another on an idle, ready service and time what it adds."""
    extra, encode, pipeline = [], [], []
    for _ in range(runs):
        started = time.perf_counter()
        job = service.submit(params)
        job.done.wait()
        elapsed = time.perf_counter() - started
        if job.state is not JobState.SUCCEEDED or job.result is None:
            raise RuntimeError(f"job {job.id} ended {job.state.value}: {job.error}")
        timings = job.result.timings
        extra.append(elapsed - timings["pipeline"])
        encode.append(timings.get("encode", 0.0))
        pipeline.append(timings["pipeline"])
    extra.sort()
    return Overhead(
        runs=runs,
        median_ms=1000 * statistics.median(extra),
        p95_ms=1000 * extra[min(len(extra) - 1, int(0.95 * len(extra)))],
        median_encode_ms=1000 * statistics.median(encode),
        median_pipeline_ms=1000 * statistics.median(pipeline),
    )
