"""One job run to its end on a worker's pipeline: its calls, its progress, and how it ended."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from sdtrt.errors import SdtrtError, debugging
from sdtrt.runtime.pipeline import GenerationOutput, Pipeline
from sdtrt.runtime.request import Request
from sdtrt.serve.errors import DeadlineExceeded, JobCancelled
from sdtrt.serve.jobs import Job, JobState
from sdtrt.serve.results import job_result

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outcome:
    state: JobState
    error: str | None
    timings: dict[str, float]
    # The job failed outside sdtrt's own errors (a device error, say): the pipeline that ran
    # it may be broken for every later call too.
    broken: bool = False


def run_job(pipe: Pipeline, job: Job, model_name: str) -> Outcome:
    """Run every call of the job (its result set on it), checking cancellation and the
    deadline between denoising steps; never raises for what went wrong in the job."""
    assert job.started is not None
    timings = {"queue": job.started - job.created}
    outputs: list[GenerationOutput] = []
    try:
        if pipe.loras != job.loras:  # switched only when this job asks for another set
            mark = time.perf_counter()
            pipe.set_loras(job.loras)
            timings["lora_switch"] = time.perf_counter() - mark
        for index, call in enumerate(job.calls):
            check(job)
            outputs.append(_call(pipe, job, index, call))
        mark = time.perf_counter()
        job.result = job_result(outputs, model_name, timings)
        timings["encode"] = time.perf_counter() - mark
    except JobCancelled:
        return Outcome(JobState.CANCELLED, "cancelled", timings)
    except DeadlineExceeded as exceeded:
        return Outcome(JobState.EXPIRED, str(exceeded), timings)
    except SdtrtError as failure:
        if debugging():
            log.error("job %s failed", job.id, exc_info=failure)
        return Outcome(JobState.FAILED, str(failure), timings)
    except Exception as failure:  # noqa: BLE001 - one bad job must not kill the worker
        log.exception("job %s failed", job.id)
        return Outcome(JobState.FAILED, f"internal error: {failure!r}", timings, broken=True)
    return Outcome(JobState.SUCCEEDED, None, timings)


def check(job: Job) -> None:
    if job.cancel_requested.is_set():
        raise JobCancelled(f"job {job.id} was cancelled")
    if job.deadline is not None and time.monotonic() > job.deadline:
        raise DeadlineExceeded(f"job {job.id} passed its deadline")


def _call(pipe: Pipeline, job: Job, index: int, call: Request) -> GenerationOutput:
    done_before = job.step

    def between_steps(i: int, total: int) -> None:
        job.call_steps[index] = total
        job.step = done_before + i + 1
        job.changed()
        check(job)

    # The request made when the job was submitted, run as it is.
    return pipe.run(
        call,
        job.call_inputs[index],
        strength=job.strength,
        output_type="pil" if job.denoising_end is None else "latent",
        denoising_start=job.denoising_start,
        denoising_end=job.denoising_end,
        step_callback=between_steps,
        controls=job.controls,
    )
