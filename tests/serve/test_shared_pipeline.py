"""One pipeline for all of a service's workers: loaded once, run by several jobs at once, taken
alone by a job that switches LoRAs (without being starved), replaced once after a device error
when its running jobs have ended."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from sdtrt.runtime.pipeline import Pipeline
from sdtrt.serve import GenerationParams, JobState, Service
from sdtrt.serve.shared_pipeline import PipelineLost, SharedPipeline


class FakePipeline:
    """What the shared pipeline touches of a real one: its LoRAs, and close()."""

    def __init__(self) -> None:
        self.loras: tuple[Any, ...] = ()
        self.closed = False

    def close(self) -> None:
        self.closed = True


def _in_thread(target: Callable[[], None]) -> threading.Thread:
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread


def _eventually(condition: Callable[[], bool]) -> None:
    for _ in range(500):
        if condition():
            return
        time.sleep(0.01)
    raise AssertionError("the condition never held")


def test_jobs_with_the_same_loras_share_it_and_a_switch_waits_its_turn() -> None:
    loads: list[FakePipeline] = []
    shared = SharedPipeline(lambda: loads.append(FakePipeline()) or loads[-1])
    assert shared.ensure() and not shared.ensure() and len(loads) == 1
    inside: list[str] = []
    release = {name: threading.Event() for name in ("a", "b", "switch", "late")}

    def job(name: str, loras: tuple[Any, ...]) -> Callable[[], None]:
        def run() -> None:
            with shared.lease(loras) as (pipe, _):
                inside.append(name)
                if pipe.loras != loras:
                    pipe.loras = loras  # what run_job's set_loras does
                release[name].wait(10)
                inside.remove(name)

        return run

    threads = [_in_thread(job("a", ())), _in_thread(job("b", ()))]
    _eventually(lambda: sorted(inside) == ["a", "b"])  # side by side on one pipeline
    threads.append(_in_thread(job("switch", ("lora",))))
    time.sleep(0.1)
    threads.append(_in_thread(job("late", ())))  # same LoRAs as the running jobs
    time.sleep(0.1)
    assert sorted(inside) == ["a", "b"]  # the switch waits; the late job waits behind it
    release["a"].set()
    release["b"].set()
    _eventually(lambda: inside == ["switch"])
    time.sleep(0.1)
    assert inside == ["switch"]  # alone while it switches and runs
    release["switch"].set()
    _eventually(lambda: inside == ["late"])  # which switches back, alone again
    release["late"].set()
    for thread in threads:
        thread.join(10)
    assert len(loads) == 1 and loads[0].loras == ()


def test_a_broken_pipeline_is_replaced_once_after_its_jobs_end() -> None:
    loads: list[FakePipeline] = []
    shared = SharedPipeline(lambda: loads.append(FakePipeline()) or loads[-1])
    shared.ensure()
    running = threading.Event()
    finish = threading.Event()

    def long_job() -> None:
        with shared.lease(()):
            running.set()
            finish.wait(10)

    job = _in_thread(long_job)
    running.wait(10)
    with shared.lease(()) as (_, generation):
        pass  # a job on the same pipeline that failed with a device error
    replacing = _in_thread(lambda: shared.replace(generation))
    time.sleep(0.1)
    assert len(loads) == 1 and not loads[0].closed  # the long job still runs on it
    finish.set()
    job.join(10)
    replacing.join(10)
    assert len(loads) == 2 and loads[0].closed and not loads[1].closed
    assert not shared.replace(generation)  # a second report of the same failure
    assert len(loads) == 2


def test_a_pipeline_that_cannot_be_loaded_fails_every_caller() -> None:
    def load() -> Any:
        raise RuntimeError("CUDA error: no CUDA-capable device is detected")

    shared = SharedPipeline(load)
    for _ in range(2):
        with pytest.raises(PipelineLost, match="no CUDA-capable device"):
            shared.ensure()
    with pytest.raises(PipelineLost), shared.lease(()):
        pass


def test_two_workers_hold_one_copy_and_run_side_by_side(tiny_engine_dir: Path) -> None:
    loads: list[int] = []

    def loader(directory: Path) -> Pipeline:
        loads.append(1)
        return Pipeline.load(directory)

    service = Service(tiny_engine_dir, workers=2, queue_size=4, loader=loader)
    service.start()
    service.wait_ready(120)
    try:
        slow = [service.submit(GenerationParams(prompt="a fox", steps=25, seed=s)) for s in (1, 2)]
        _eventually(lambda: all(job.state is JobState.RUNNING for job in slow))
        for job in slow:
            assert job.done.wait(120) and job.state is JobState.SUCCEEDED
        quick = GenerationParams(prompt="a fox", steps=3, seed=5)
        together = [service.submit(quick) for _ in range(2)]
        for job in together:
            assert job.done.wait(60) and job.state is JobState.SUCCEEDED
    finally:
        service.shutdown(10)
    assert len(loads) == 1
    first, second = (job.result.pngs[0] for job in together)  # type: ignore[union-attr]
    assert first == second  # same seed, same bytes, though run at the same time
