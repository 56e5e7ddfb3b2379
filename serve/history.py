"""The jobs a service knows, finished ones kept for polling within bounds of count, bytes and
time. Not locked here: the service calls it under its own lock."""

from __future__ import annotations

import time
from collections import OrderedDict

from sdtrt.serve.errors import UnknownJob
from sdtrt.serve.jobs import Job


class JobHistory:
    def __init__(self, count: int, max_bytes: int, ttl_s: float) -> None:
        self.count = count
        self.max_bytes = max_bytes
        self.ttl_s = ttl_s
        self._jobs: OrderedDict[str, Job] = OrderedDict()

    def add(self, job: Job) -> None:
        self._jobs[job.id] = job

    def get(self, job_id: str, owner: str | None = None) -> Job:
        """The job, to its `owner` only when one is given: to anyone else it does not exist."""
        job = self._jobs.get(job_id)
        if job is None or (owner is not None and job.owner != owner):
            raise UnknownJob(f"no job with id {job_id!r}")
        return job

    def forget(self, job: Job) -> None:
        self._jobs.pop(job.id, None)

    def of(self, owner: str) -> list[Job]:
        return [job for job in self._jobs.values() if job.owner == owner]

    def all(self) -> list[Job]:
        return list(self._jobs.values())

    def trim(self) -> None:
        """Keep finished jobs for `ttl_s` at most, and no more than `count` of them holding
        `max_bytes` of images in all: the oldest dropped first."""
        now = time.monotonic()
        finished = [job for job in self._jobs.values() if job.state.finished]
        kept, held = len(finished), sum(job.result_bytes for job in finished)
        for job in finished:
            assert job.finished_at is not None
            if now - job.finished_at > self.ttl_s or kept > self.count or held > self.max_bytes:
                kept, held = kept - 1, held - job.result_bytes
                del self._jobs[job.id]
