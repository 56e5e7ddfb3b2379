"""Prometheus metrics of one service, in a registry of its own (services may share a process)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

OUTCOMES = ("completed", "failed", "cancelled", "expired", "rejected")
STAGES = (
    "queue",
    "tokenize",
    "text_encoder",
    "unet",
    "scheduler",
    "vae_decoder",
    "encode",
    "total",
)
# From a few ms (tiny engines) to minutes (large images on a CPU).
_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class ServiceMetrics:
    def __init__(self, queue_depth: Callable[[], int], running: Callable[[], int]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        depth = Gauge("sdtrt_queue_depth", "Jobs waiting for a worker.", registry=self.registry)
        depth.set_function(lambda: float(queue_depth()))
        busy = Gauge("sdtrt_jobs_running", "Jobs a worker is running.", registry=self.registry)
        busy.set_function(lambda: float(running()))
        self.ready = Gauge(
            "sdtrt_ready", "1 once every worker has warmed up.", registry=self.registry
        )
        self.jobs = Counter("sdtrt_jobs", "Jobs by outcome.", ["outcome"], registry=self.registry)
        self.stage_seconds = Histogram(
            "sdtrt_stage_seconds",
            "Seconds per job spent in each stage (queue wait, networks, PNG encoding, total).",
            ["stage"],
            buckets=_BUCKETS,
            registry=self.registry,
        )
        for outcome in OUTCOMES:
            self.jobs.labels(outcome)  # present at 0 from the start, so rates work at once
        for stage in STAGES:
            self.stage_seconds.labels(stage)

    def observe(self, timings: dict[str, float]) -> None:
        for stage, seconds in timings.items():
            if stage in STAGES:
                self.stage_seconds.labels(stage).observe(seconds)
