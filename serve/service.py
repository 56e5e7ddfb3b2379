"""The service: a bounded FIFO queue in front of N workers over one engine directory.

The workers share one `Pipeline` (serve/shared_pipeline.py: one copy of the engines, each call
in flight with its own execution state), loaded and warmed with one short generation before
the service reports ready. Cancellation and deadlines are checked between denoising steps
through the pipeline's step callback. `shutdown` drains: no new jobs, the queued and running
ones finish (up to a timeout, after which they are cancelled).

Workers are supervised: a job that fails outside sdtrt's own errors (a device error, say) makes
the service load the engines again, unready until they are; where they cannot be loaded again
the service fails (and says so on /readyz) instead of failing every job while it says ready. A
worker outlives any error around a job.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

from sdtrt.engine.backends import get_backend
from sdtrt.engine.manifest import Manifest, read_manifest
from sdtrt.errors import ArtifactError, InputError
from sdtrt.runtime.engine_directory import default_scheduler, read_scheduler_config
from sdtrt.runtime.pipeline import Pipeline
from sdtrt.serve.errors import NotAccepting, QueueFull
from sdtrt.serve.history import JobHistory
from sdtrt.serve.jobs import GenerationParams, Job, JobState
from sdtrt.serve.metrics import ServiceMetrics
from sdtrt.serve.planning import plan_calls
from sdtrt.serve.running import Outcome, run_job
from sdtrt.serve.shared_pipeline import PipelineLost, SharedPipeline

log = logging.getLogger(__name__)

PipelineLoader = Callable[[Path], Pipeline]
_OUTCOME = {
    JobState.SUCCEEDED: "completed",
    JobState.FAILED: "failed",
    JobState.CANCELLED: "cancelled",
    JobState.EXPIRED: "expired",
}


def on_gpu(manifest: Manifest) -> bool:
    return any(
        get_backend(record.backend).device_kind.is_gpu for record in manifest.components.values()
    )


def default_workers(manifest: Manifest) -> int:
    """Workers the backend runs side by side to advantage.

    The CPU backends (ONNX Runtime, OpenVINO) already spread one call over every core, so a
    second worker only competes for them; on a GPU a second execution context overlaps one
    call's host work (scheduler, tokenizer, PNG encoding) with the other's kernels.
    """
    return 2 if on_gpu(manifest) else 1


class Service:
    def __init__(
        self,
        directory: str | Path,
        workers: int | None = None,
        queue_size: int = 16,
        history: int = 64,
        history_bytes: int = 256 * 2**20,
        history_ttl_s: float = 3600.0,
        warmup_steps: int = 2,
        loader: PipelineLoader = Pipeline.load,
    ) -> None:
        self.directory = Path(directory)
        self.manifest = read_manifest(self.directory)
        self.default_scheduler = default_scheduler(
            read_scheduler_config(self.directory, self.manifest)
        )
        self.workers = default_workers(self.manifest) if workers is None else workers
        if self.workers < 1:
            raise InputError(f"--workers must be at least 1, got {self.workers}")
        if queue_size < 1:
            raise InputError(f"--queue must be at least 1, got {queue_size}")
        self.queue_size = queue_size
        self._history = JobHistory(history, history_bytes, history_ttl_s)
        self._warmup_steps = warmup_steps
        self._loader = loader
        self._pipes = SharedPipeline(self._warm_pipeline)
        self._lock = threading.Lock()
        self._work_ready = threading.Condition(self._lock)
        self._queue: deque[Job] = deque()
        self._running = 0
        self._state = "created"  # created, starting, ready, draining, stopped, failed
        self._failure: str | None = None
        self._mean_run_s = 1.0  # running mean of job run time, for Retry-After
        self._threads: list[threading.Thread] = []
        self.ready_event = threading.Event()
        self.metrics = ServiceMetrics(lambda: len(self._queue), lambda: self._running)

    # --- lifecycle -------------------------------------------------------------------------

    @property
    def state(self) -> str:
        return self._state

    @property
    def failure(self) -> str | None:
        return self._failure

    def start(self) -> None:
        """Start the workers; they load and warm up in the background (see `wait_ready`)."""
        with self._lock:
            if self._state != "created":
                return
            self._state = "starting"
        for index in range(self.workers):
            thread = threading.Thread(
                target=self._worker, args=(index,), name=f"sdtrt-worker-{index}", daemon=True
            )
            self._threads.append(thread)
            thread.start()

    def wait_ready(self, timeout: float | None = None) -> None:
        """Block until the pipeline is loaded and warm; raise the load error if it failed."""
        if not self.ready_event.wait(timeout):
            raise NotAccepting(f"the service did not become ready within {timeout} s")
        if self._state == "failed":
            raise ArtifactError(self._failure or "a worker failed to start")

    def shutdown(self, timeout: float = 30.0) -> None:
        """Stop taking jobs, let queued and running ones finish for up to `timeout` s, stop."""
        with self._lock:
            if self._state in ("stopped", "created"):
                self._state = "stopped"
                return
            self._state = "draining"
            self.metrics.ready.set(0)
            self._work_ready.notify_all()
        limit = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, limit - time.monotonic()))
        if any(thread.is_alive() for thread in self._threads):
            log.warning("jobs still running after %.0f s of draining; cancelling them", timeout)
            with self._lock:
                for job in self._history.all():
                    job.cancel_requested.set()
                while self._queue:
                    self._finish_locked(self._queue.popleft(), JobState.CANCELLED, "shut down")
            for thread in self._threads:
                thread.join(10.0)
        self._pipes.close()
        with self._lock:
            self._state = "stopped"
        self.ready_event.set()

    # --- jobs --------------------------------------------------------------------------------

    def submit(
        self, params: GenerationParams, owner: str = "", deadline_s: float | None = None
    ) -> Job:
        """Queue a job, or raise InputError / QueueFull / NotAccepting. Never blocks on a worker."""
        if self._state != "ready":
            raise NotAccepting(self._not_ready_message())
        if deadline_s is not None and not (math.isfinite(deadline_s) and deadline_s > 0):
            raise InputError(f"deadline must be a positive number of seconds, got {deadline_s}")
        plan = plan_calls(self.manifest, self.default_scheduler, params)
        deadline = None if deadline_s is None else time.monotonic() + deadline_s
        with self._lock:
            if self._state != "ready":
                raise NotAccepting(self._not_ready_message())
            if len(self._queue) >= self.queue_size:
                self.metrics.jobs.labels("rejected").inc()
                waves = (len(self._queue) + self._running) / self.workers
                retry_after = max(1, min(600, math.ceil(waves * self._mean_run_s)))
                raise QueueFull(
                    f"the queue is full ({self.queue_size} jobs waiting); retry in {retry_after} s",
                    retry_after,
                )
            job = Job(
                calls=plan.calls,
                owner=owner,
                deadline=deadline,
                call_inputs=plan.call_inputs,
                strength=plan.strength,
                loras=params.loras,
                denoising_start=params.denoising_start,
                denoising_end=params.denoising_end,
                controls=plan.controls,
            )
            self._history.add(job)
            self._queue.append(job)
            self._history.trim()
            self._work_ready.notify()
        return job

    def get(self, job_id: str, owner: str | None = None) -> Job:
        """The job, to its `owner` only when one is given: to anyone else it does not exist."""
        with self._lock:
            return self._history.get(job_id, owner)

    def cancel(self, job_id: str, owner: str | None = None) -> Job:
        """Cancel one job: dropped from the queue at once, or stopped after its current step."""
        with self._lock:
            job = self._history.get(job_id, owner)
            if job.state is JobState.QUEUED:
                self._queue.remove(job)
                self._finish_locked(job, JobState.CANCELLED, "cancelled")
            elif job.state is JobState.RUNNING:
                job.cancel_requested.set()
        return job

    def queue_position(self, job: Job) -> int | None:
        """1 for the next job a worker takes; None once it runs."""
        with self._lock:
            try:
                return self._queue.index(job) + 1
            except ValueError:
                return None

    def forget(self, job: Job) -> None:
        """Drop a finished job whose client waited for it and has its answer: its images are
        not kept a second time for a poll that will not come."""
        with self._lock:
            if job.state.finished:
                self._history.forget(job)

    def jobs_of(self, owner: str) -> list[Job]:
        with self._lock:
            return self._history.of(owner)

    @property
    def queue_depth(self) -> int:
        return len(self._queue)

    @property
    def running(self) -> int:
        return self._running

    # --- internals ---------------------------------------------------------------------------

    def _not_ready_message(self) -> str:
        if self._state == "failed":
            return f"the service failed to start: {self._failure}"
        if self._state in ("draining", "stopped"):
            return "the service is shutting down and takes no new jobs"
        return "the service is warming up; retry in a few seconds"

    def _worker(self, index: int) -> None:
        """Run jobs on the shared pipeline (the first worker to start loads it) until the
        service drains or fails."""
        try:
            self._pipes.ensure()
        except PipelineLost as lost:
            self._fail(str(lost))
            return
        self._set_ready()
        while (job := self._take()) is not None:
            try:
                if not self._run(job):
                    return
            except Exception as error:  # noqa: BLE001 - a bug around a job must not stop the worker
                log.exception("worker %d failed around job %s", index, job.id)
                with self._lock:
                    if not job.state.finished:
                        self._running -= 1
                        self._finish_locked(job, JobState.FAILED, f"internal error: {error!r}")

    def _warm_pipeline(self) -> Pipeline:
        pipe = self._loader(self.directory)
        try:
            pipe(
                "warm-up",
                num_inference_steps=self._warmup_steps,
                seed=0,
                scheduler=self.default_scheduler,
                output_type="np",
            )
        except BaseException:
            pipe.close()
            raise
        return pipe

    def _set_ready(self) -> None:
        with self._lock:
            if self._state == "starting":
                self._state = "ready"
                self.metrics.ready.set(1)
                self.ready_event.set()

    def _fail(self, message: str) -> None:
        """No pipeline can run: unready for good, and the queued jobs failed."""
        log.error("the engines could not be loaded: %s", message)
        with self._lock:
            if self._state not in ("stopped", "failed"):
                self._state = "failed"
                self._failure = message
                self.metrics.ready.set(0)
            while self._queue:  # nobody is left to run them
                failed = f"the service failed: {message}"
                self._finish_locked(self._queue.popleft(), JobState.FAILED, failed)
            self._work_ready.notify_all()
        self.ready_event.set()

    def _take(self) -> Job | None:
        with self._lock:
            while not self._queue and self._state in ("starting", "ready"):
                self._work_ready.wait()
            if not self._queue:
                return None  # draining and nothing left
            job = self._queue.popleft()
            job.state = JobState.RUNNING
            job.started = time.monotonic()
            self._running += 1
        job.changed()
        return job

    def _run(self, job: Job) -> bool:
        """Run the job to its end; False once the service has failed."""
        generation = 0
        try:
            with self._pipes.lease(job.loras) as (pipe, generation):
                outcome = run_job(pipe, job, self.manifest.model.name)
        except PipelineLost as lost:  # while it waited for the pipeline
            outcome = Outcome(JobState.FAILED, f"the service failed: {lost}", {})
        assert job.started is not None
        with self._lock:
            self._running -= 1
            run_s = time.monotonic() - job.started
            self._mean_run_s += 0.2 * (run_s - self._mean_run_s)
            if outcome.broken and self._state == "ready":  # before its client hears of it
                self._state = "starting"
                self.metrics.ready.set(0)
            self._finish_locked(job, outcome.state, outcome.error, outcome.timings or None)
        if not outcome.broken:
            return self._state != "failed"
        log.warning("the engines are loaded again after that failure")
        try:
            if self._pipes.replace(generation):
                self._set_ready()
        except PipelineLost as lost:
            self._fail(str(lost))
            return False
        return True

    def _finish_locked(
        self,
        job: Job,
        state: JobState,
        error: str | None,
        timings: dict[str, float] | None = None,
    ) -> None:
        job.state = state
        job.error = error
        job.finished_at = time.monotonic()
        timings = timings if timings is not None else {"queue": job.finished_at - job.created}
        timings["total"] = job.finished_at - job.created
        if job.result is not None:
            job.result.timings = timings
        self.metrics.jobs.labels(_OUTCOME[state]).inc()
        self.metrics.observe(timings)
        job.changed()
        self._history.trim()
