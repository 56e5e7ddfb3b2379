"""Workers that outlive what goes wrong around them, and a history of jobs with bounded memory."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from serving import live_server

from sdtrt.runtime.pipeline import Pipeline
from sdtrt.serve import GenerationParams, JobState, Service
from sdtrt.serve.errors import NotAccepting, UnknownJob

QUICK = GenerationParams(prompt="a red fox", steps=2, seed=11)
BREAKS = GenerationParams(prompt="break the device", steps=2, seed=11)


class FlakyPipeline:
    """A real pipeline whose calls fail, as a lost device fails them, on the prompt BREAKS has."""

    def __init__(self, pipe: Pipeline) -> None:
        self.pipe = pipe

    def __getattr__(self, name: str) -> Any:  # the rest of the pipeline, as it is
        return getattr(self.pipe, name)

    def __call__(self, prompt: Any, **kwargs: Any) -> Any:  # the warm-up
        return self.pipe(prompt, **kwargs)

    def run(self, request: Any, *args: Any, **kwargs: Any) -> Any:  # the jobs
        if request.prompts == [BREAKS.prompt]:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return self.pipe.run(request, *args, **kwargs)

    def close(self) -> None:
        self.pipe.close()

    def __enter__(self) -> FlakyPipeline:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _service(engine_dir: Path, loads: list[int], reload_works: bool = True, **kw: Any) -> Service:
    def loader(directory: Path) -> Any:
        loads.append(1)
        if len(loads) > 1 and not reload_works:
            raise RuntimeError("CUDA error: no CUDA-capable device is detected")
        return FlakyPipeline(Pipeline.load(directory))

    service = Service(engine_dir, workers=1, queue_size=4, loader=loader, **kw)
    service.start()
    service.wait_ready(120)
    return service


def test_a_failing_listener_does_not_stop_the_worker(tiny_engine_dir: Path) -> None:
    service = _service(tiny_engine_dir, [])
    try:
        job = service.submit(QUICK)

        def broken() -> None:
            raise RuntimeError("the event loop is closed")

        job.subscribe(broken)
        assert job.done.wait(60) and job.state is JobState.SUCCEEDED
        after = service.submit(QUICK)
        assert after.done.wait(60) and after.state is JobState.SUCCEEDED
    finally:
        service.shutdown(10)


def test_a_device_error_makes_the_worker_load_its_engines_again(tiny_engine_dir: Path) -> None:
    loads: list[int] = []
    service = _service(tiny_engine_dir, loads)
    try:
        broken = service.submit(BREAKS)
        assert broken.done.wait(60) and broken.state is JobState.FAILED
        assert "illegal memory access" in (broken.error or "")
        service.ready_event.wait(60)
        job = _submit_when_ready(service, QUICK)
        assert job.done.wait(60) and job.state is JobState.SUCCEEDED
        assert len(loads) == 2 and service.state == "ready"
    finally:
        service.shutdown(10)


def test_a_device_that_stays_broken_fails_the_service(tiny_engine_dir: Path) -> None:
    loads: list[int] = []
    service = _service(tiny_engine_dir, loads, reload_works=False)
    try:
        service.submit(GenerationParams(prompt="slow", steps=100, seed=1))  # holds the worker
        broken = service.submit(BREAKS)
        queued = service.submit(QUICK)  # waiting when the device breaks
        assert broken.done.wait(60) and queued.done.wait(60)
        assert queued.state is JobState.FAILED and "no CUDA-capable device" in (queued.error or "")
        assert service.state == "failed" and "no CUDA-capable device" in (service.failure or "")
        assert service.metrics.ready._value.get() == 0  # noqa: SLF001
        with pytest.raises(NotAccepting, match="failed"):
            service.submit(QUICK)
    finally:
        service.shutdown(10)


def test_readyz_says_so_once_the_service_failed(tiny_engine_dir: Path) -> None:
    loads: list[int] = []

    def loader(directory: Path) -> Any:
        loads.append(1)
        if len(loads) > 1:
            raise RuntimeError("CUDA error: no CUDA-capable device is detected")
        return FlakyPipeline(Pipeline.load(directory))

    with live_server(tiny_engine_dir, loader=loader) as live, live.client() as client:
        assert client.get("/readyz").status_code == 200
        failed = client.post("/v1/txt2img", json={"prompt": BREAKS.prompt, "steps": 2})
        assert failed.status_code == 500
        for _ in range(300):  # unready at once; failed once the reload has failed
            ready = client.get("/readyz")
            assert ready.status_code == 503
            if ready.json()["status"] == "failed":
                break
            threading.Event().wait(0.1)
        assert "no CUDA-capable device" in ready.json()["detail"]


def _submit_when_ready(service: Service, params: GenerationParams) -> Any:
    done = threading.Event()
    for _ in range(600):
        try:
            return service.submit(params)
        except NotAccepting:
            done.wait(0.1)
    raise AssertionError(f"the service stayed {service.state}")


def test_finished_jobs_are_kept_within_a_byte_budget_and_a_time(tiny_engine_dir: Path) -> None:
    service = Service(tiny_engine_dir, workers=1, history_bytes=1)
    service.start()
    service.wait_ready(120)
    try:
        first = service.submit(QUICK)
        assert first.done.wait(60) and first.result_bytes > 1
        second = service.submit(QUICK)  # the first is forgotten: one image is over the budget
        assert second.done.wait(60)
        with pytest.raises(UnknownJob):
            service.get(first.id)
    finally:
        service.shutdown(10)
    service = Service(tiny_engine_dir, workers=1, history_ttl_s=0.0)
    service.start()
    service.wait_ready(120)
    try:
        first = service.submit(QUICK)
        assert first.done.wait(60)
        second = service.submit(QUICK)
        assert second.done.wait(60)
        with pytest.raises(UnknownJob):
            service.get(first.id)
    finally:
        service.shutdown(10)


def test_an_answered_waiting_request_is_not_kept(tiny_engine_dir: Path) -> None:
    with live_server(tiny_engine_dir) as live, live.client() as client:
        waited = client.post("/v1/txt2img", json={"prompt": "a red fox", "steps": 2})
        assert waited.status_code == 200
        assert client.get(f"/v1/jobs/{waited.json()['id']}").status_code == 404
        polled = client.post("/v1/txt2img?wait=false", json={"prompt": "a red fox", "steps": 2})
        job = live.service.get(polled.json()["id"])
        assert job.done.wait(60)
        assert client.get(f"/v1/jobs/{job.id}").json()["result"]["images"]
