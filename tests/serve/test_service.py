"""The service without HTTP: queue, workers, ids, cancellation, deadlines, warm-up, draining."""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sdtrt.errors import InputError, SdtrtError
from sdtrt.runtime.pipeline import Pipeline
from sdtrt.serve import GenerationParams, JobState, Service
from sdtrt.serve.errors import NotAccepting, QueueFull, UnknownJob

QUICK = GenerationParams(prompt="a red fox", steps=3, seed=11)
LONG = GenerationParams(prompt="a long job", steps=400, seed=5)


@pytest.fixture(scope="module")
def service(tiny_engine_dir: Path) -> Iterator[Service]:
    service = Service(tiny_engine_dir, workers=2, queue_size=4)
    service.start()
    service.wait_ready(120)
    yield service
    service.shutdown(10)


def _pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def _wait(job, timeout: float = 60) -> None:  # type: ignore[no-untyped-def]
    assert job.done.wait(timeout), f"job {job.id} still {job.state} after {timeout} s"


def _wait_running(job, steps: int = 1) -> None:  # type: ignore[no-untyped-def]
    limit = time.monotonic() + 30
    while job.step < steps and time.monotonic() < limit:
        time.sleep(0.01)
    assert job.step >= steps


def test_warm_up_before_ready(tiny_engine_dir: Path) -> None:
    gate = threading.Event()

    def slow_loader(directory: Path) -> Pipeline:
        gate.wait(30)
        return Pipeline.load(directory)

    service = Service(tiny_engine_dir, workers=1, loader=slow_loader)
    with pytest.raises(NotAccepting, match="warming up"):
        service.submit(QUICK)
    service.start()
    assert service.state == "starting"
    with pytest.raises(NotAccepting):
        service.submit(QUICK)
    gate.set()
    service.wait_ready(60)
    assert service.state == "ready"
    job = service.submit(QUICK)
    _wait(job)
    assert job.state is JobState.SUCCEEDED
    service.shutdown(5)
    with pytest.raises(NotAccepting, match="shutting down"):
        service.submit(QUICK)


def test_failed_load_is_reported(engine_copy: Path) -> None:
    for network in engine_copy.glob("unet/*"):
        if network.suffix in (".onnx", ".blob"):
            network.write_bytes(b"damaged")
    service = Service(engine_copy, workers=1)
    service.start()
    with pytest.raises(SdtrtError):
        service.wait_ready(60)
    assert service.state == "failed" and service.failure
    service.shutdown(1)


def test_result_is_the_pipelines_image(service: Service, tiny_engine_dir: Path) -> None:
    job = service.submit(QUICK)
    _wait(job)
    assert job.state is JobState.SUCCEEDED and job.result is not None
    with Pipeline.load(tiny_engine_dir) as pipe:
        direct = pipe("a red fox", num_inference_steps=3, seed=11).images[0]
    assert np.array_equal(_pixels(job.result.pngs[0]), np.asarray(direct))
    text = Image.open(io.BytesIO(job.result.pngs[0])).text["parameters"]  # type: ignore[attr-defined]
    assert "Seed: 11" in text and "Steps: 3" in text
    assert job.result.seeds == [11]
    assert {"queue", "unet", "vae_decoder", "encode", "total"} <= set(job.result.timings)


def test_same_seed_same_bytes_whatever_runs_beside(service: Service) -> None:
    jobs = [service.submit(QUICK if i % 2 == 0 else LONG) for i in range(4)]
    _wait(jobs[0])
    _wait(jobs[2])
    for job in jobs[1::2]:
        service.cancel(job.id)
    reference = service.submit(QUICK)
    _wait(reference)
    assert reference.result is not None
    for job in jobs[0::2]:
        assert job.result is not None and job.result.pngs == reference.result.pngs
    for job in jobs[1::2]:
        _wait(job)


def test_queue_is_bounded_fifo_and_rejects_with_retry_after(tiny_engine_dir: Path) -> None:
    service = Service(tiny_engine_dir, workers=1, queue_size=2)
    service.start()
    service.wait_ready(60)
    running = service.submit(LONG)
    _wait_running(running)
    first, second = service.submit(QUICK), service.submit(QUICK)
    assert service.queue_position(first) == 1 and service.queue_position(second) == 2
    with pytest.raises(QueueFull) as refused:
        service.submit(QUICK)
    assert refused.value.retry_after >= 1
    service.cancel(running.id)
    _wait(second)
    assert first.started is not None and second.started is not None
    assert first.started <= second.started
    service.shutdown(10)


def test_cancel_queued_and_running_jobs_only(tiny_engine_dir: Path) -> None:
    service = Service(tiny_engine_dir, workers=1, queue_size=4)
    service.start()
    service.wait_ready(60)
    running = service.submit(LONG)
    queued = service.submit(QUICK)
    bystander = service.submit(QUICK)
    _wait_running(running, 2)
    service.cancel(queued.id)
    assert queued.state is JobState.CANCELLED  # dropped at once, never ran
    service.cancel(running.id)
    _wait(running)
    assert running.state is JobState.CANCELLED
    assert running.step < running.total_steps  # stopped between steps, not at the end
    _wait(bystander)
    assert bystander.state is JobState.SUCCEEDED
    with pytest.raises(UnknownJob):
        service.cancel("no-such-job")
    service.shutdown(10)


def test_deadline_stops_a_job(service: Service) -> None:
    job = service.submit(LONG, deadline_s=0.3)
    _wait(job)
    assert job.state is JobState.EXPIRED and "deadline" in (job.error or "")
    with pytest.raises(InputError, match="deadline"):
        service.submit(QUICK, deadline_s=0)


def test_per_image_seeds_remake_each_image_alone(service: Service) -> None:
    params = GenerationParams(prompt="three", steps=2, seed=40, images=3, per_image_seeds=True)
    job = service.submit(params)
    _wait(job)
    assert job.result is not None and job.result.seeds == [40, 41, 42]
    alone = service.submit(GenerationParams(prompt="three", steps=2, seed=41))
    _wait(alone)
    assert alone.result is not None and alone.result.pngs[0] == job.result.pngs[1]


@pytest.mark.parametrize(
    ("params", "message"),
    [
        (GenerationParams(prompt="x", height=33), "multiple of"),
        (GenerationParams(prompt="x", height=4096), "outside the built range"),
        (GenerationParams(prompt="x", steps=0), "steps"),
        (GenerationParams(prompt="x", images=99), "exceeds the built maximum"),
        (GenerationParams(prompt="x", scheduler="nope"), "unknown scheduler"),
        (GenerationParams(prompt="x", guidance=float("nan")), "finite"),
    ],
)
def test_bad_params_are_refused_at_submit(
    service: Service, params: GenerationParams, message: str
) -> None:
    with pytest.raises(InputError, match=message):
        service.submit(params)


def test_shutdown_drains_queued_jobs(tiny_engine_dir: Path) -> None:
    service = Service(tiny_engine_dir, workers=1, queue_size=4)
    service.start()
    service.wait_ready(60)
    jobs = [service.submit(QUICK) for _ in range(3)]
    service.shutdown(60)
    assert [job.state for job in jobs] == [JobState.SUCCEEDED] * 3
    assert service.state == "stopped"


def test_metrics_count_outcomes(service: Service) -> None:
    from prometheus_client import generate_latest

    _wait(service.submit(QUICK))
    text = generate_latest(service.metrics.registry).decode()
    prefix = 'sdtrt_jobs_total{outcome="completed"}'
    completed = next(line for line in text.splitlines() if line.startswith(prefix))
    assert float(completed.split()[-1]) >= 1
    assert 'sdtrt_stage_seconds_count{stage="unet"}' in text
    assert "sdtrt_queue_depth 0.0" in text
