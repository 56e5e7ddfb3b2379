"""Ray Serve: the service on more than one machine (or GPU).

`build_app` makes a deployment graph: a FastAPI ingress in front of a model deployment whose
replicas each run a `Service` over the same engine directory (one replica per GPU on the GPU
backends). Each replica takes at most `workers + queue` requests at a time
(`max_ongoing_requests`); Ray queues the rest or, with `autoscaling_config`, adds replicas.
The engine directory must exist at the same path on every node.

    from sdtrt.serve.ray import build_app
    ray.serve.run(build_app("engines/sd15-trt", num_replicas=4))
"""

import asyncio
import base64
import json
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from ray import serve
from ray.serve.handle import DeploymentHandle

from sdtrt.engine.manifest import read_manifest
from sdtrt.errors import InputError
from sdtrt.serve.errors import NotAccepting, QueueFull
from sdtrt.serve.jobs import GenerationParams, JobState
from sdtrt.serve.schemas import Txt2ImgRequest
from sdtrt.serve.service import Service, default_workers, on_gpu
from sdtrt.serve.waiting import job_changes

_STATUS = {JobState.CANCELLED: 409, JobState.EXPIRED: 408, JobState.FAILED: 500}


@serve.deployment
class SdtrtModel:
    """One replica: a warm Service; `generate` runs one request to the end."""

    def __init__(self, directory: str, workers: int | None, queue: int, max_steps: int) -> None:
        self.service = Service(directory, workers=workers, queue_size=queue)
        self.service.start()
        self.service.wait_ready()
        self.max_steps = max_steps
        self.replica = serve.get_replica_context().replica_id.unique_id

    def check_health(self) -> None:
        if self.service.state != "ready":
            raise RuntimeError(f"sdtrt service is {self.service.state}: {self.service.failure}")

    async def generate(self, body: dict[str, Any]) -> dict[str, Any]:
        """A /v1 txt2img body in, the /v1 answer (or an error with its status) out."""
        try:
            request = Txt2ImgRequest.model_validate(body)
            if not 1 <= request.steps <= self.max_steps:
                raise InputError(f"steps must be 1 to {self.max_steps}, got {request.steps}")
            params = GenerationParams(
                prompt=request.prompt,
                negative_prompt=request.negative_prompt,
                steps=request.steps,
                guidance=request.guidance,
                seed=request.seed,
                height=request.height,
                width=request.width,
                scheduler=request.scheduler,
                images=request.batch,
            )
            job = self.service.submit(params, owner=self.replica, deadline_s=request.deadline)
        except QueueFull as error:
            return {"status": 429, "detail": str(error), "retry_after": error.retry_after}
        except NotAccepting as error:
            return {"status": 503, "detail": str(error), "retry_after": error.retry_after}
        except ValidationError as error:
            first = error.errors()[0]
            where = ".".join(str(part) for part in first["loc"])
            return {"status": 422, "detail": f"{where}: {first['msg']}"}
        except InputError as error:
            return {"status": 400, "detail": str(error)}
        try:
            async for _ in job_changes(job):
                pass
        except asyncio.CancelledError:  # the HTTP client went away: Ray cancels this call
            self.service.cancel(job.id)
            raise
        if job.state is not JobState.SUCCEEDED or job.result is None:
            return {"status": _STATUS.get(job.state, 500), "detail": job.error, "id": job.id}
        return {
            "status": 200,
            "replica": self.replica,
            "id": job.id,
            "images": [base64.b64encode(png).decode("ascii") for png in job.result.pngs],
            "seeds": job.result.seeds,
            "parameters": job.result.infotexts,
            "timings": job.result.timings,
        }


ingress_app = FastAPI(title="sdtrt on Ray Serve")


@serve.deployment
@serve.ingress(ingress_app)
class SdtrtIngress:
    def __init__(self, model: DeploymentHandle) -> None:
        self.model = model

    @ingress_app.get("/healthz")
    def healthz(self) -> dict[str, str]:
        return {"status": "ok"}

    @ingress_app.post("/v1/txt2img")
    async def txt2img(self, request: Request) -> JSONResponse:
        """The /v1 request and answer; the answer's X-Sdtrt-Replica header names the replica."""
        try:
            body = json.loads(await request.body())
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            return JSONResponse({"detail": f"the body is not valid JSON: {error}"}, 422)
        if not isinstance(body, dict):
            return JSONResponse({"detail": "the body must be a JSON object"}, 422)
        answer = await self.model.generate.remote(body)
        status = answer.pop("status")
        headers = {}
        if "retry_after" in answer:
            headers["Retry-After"] = str(answer.pop("retry_after"))
        if "replica" in answer:
            headers["X-Sdtrt-Replica"] = answer.pop("replica")
        return JSONResponse(answer, status_code=status, headers=headers)


def build_app(
    directory: str | Path,
    num_replicas: int = 1,
    workers: int | None = None,
    queue: int = 16,
    max_steps: int = 150,
    autoscaling_config: dict[str, Any] | None = None,
    gpus_per_replica: float | None = None,
) -> serve.Application:
    """The deployment graph for DIRECTORY. `autoscaling_config` (Ray's keys: min_replicas,
    max_replicas, target_ongoing_requests, ...) replaces the fixed `num_replicas`;
    `gpus_per_replica` defaults to 1 on the GPU backends (one replica per GPU), 0 on the CPU."""
    directory = Path(directory).resolve()
    manifest = read_manifest(directory)
    workers = default_workers(manifest) if workers is None else workers
    if gpus_per_replica is None:
        gpus_per_replica = 1 if on_gpu(manifest) else 0
    options: dict[str, Any] = {
        "max_ongoing_requests": workers + queue,
        "ray_actor_options": {"num_gpus": gpus_per_replica, "num_cpus": 0.5},
    }
    if autoscaling_config is not None:
        options["autoscaling_config"] = autoscaling_config
    else:
        options["num_replicas"] = num_replicas
    # @serve.deployment turns the classes into Deployments, which mypy cannot see.
    deployment: Any = SdtrtModel
    model = deployment.options(**options).bind(str(directory), workers, queue, max_steps)
    ingress: Any = SdtrtIngress
    return ingress.options(ray_actor_options={"num_cpus": 0.25}).bind(model)
