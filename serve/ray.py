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
from sdtrt.serve.guards import body_refusal, host_name, refusal
from sdtrt.serve.jobs import GenerationParams, JobState
from sdtrt.serve.options import ServeOptions
from sdtrt.serve.schemas import Txt2ImgRequest
from sdtrt.serve.service import Service, default_workers, on_gpu
from sdtrt.serve.v1 import check_limits
from sdtrt.serve.waiting import job_changes

_STATUS = {JobState.CANCELLED: 409, JobState.EXPIRED: 408, JobState.FAILED: 500}


@serve.deployment
class SdtrtModel:
    """One replica: a warm Service; `generate` runs one request to the end."""

    def __init__(
        self, directory: str, workers: int | None, queue: int, options: ServeOptions
    ) -> None:
        self.service = Service(directory, workers=workers, queue_size=queue)
        self.service.start()
        self.service.wait_ready()
        self.options = options
        self.replica = serve.get_replica_context().replica_id.unique_id

    def check_health(self) -> None:
        if self.service.state != "ready":
            raise RuntimeError(f"sdtrt service is {self.service.state}: {self.service.failure}")

    async def generate(self, body: dict[str, Any]) -> dict[str, Any]:
        """A /v1 txt2img body in, the /v1 answer (or an error with its status) out."""
        try:
            request = Txt2ImgRequest.model_validate(body)
            check_limits(self.options, request.prompt, request.negative_prompt, request.steps)
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
        self.service.forget(job)  # answered here: nobody polls a Ray job
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
    def __init__(self, model: DeploymentHandle, options: ServeOptions) -> None:
        self.model = model
        self.options = options

    @ingress_app.get("/healthz")
    def healthz(self) -> dict[str, str]:
        return {"status": "ok"}

    @ingress_app.post("/v1/txt2img")
    async def txt2img(self, request: Request) -> JSONResponse:
        """The /v1 request and answer; the answer's X-Sdtrt-Replica header names the replica.
        Guarded as `sdtrt serve` is: host, origin, key, body size and type, then the limits."""
        headers = {name.lower(): value for name, value in request.headers.items()}
        refused = refusal(request.method, request.url.path, headers, self.options)
        if refused is not None:
            return refused
        raw = await request.body()
        refused = body_refusal(request.url.path, raw, headers, self.options)
        if refused is not None:
            return refused
        try:
            body = json.loads(raw)
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
    api_key: str | None = None,
    allowed_hosts: tuple[str, ...] = (),
) -> serve.Application:
    """The deployment graph for DIRECTORY. `autoscaling_config` (Ray's keys: min_replicas,
    max_replicas, target_ongoing_requests, ...) replaces the fixed `num_replicas`;
    `gpus_per_replica` defaults to 1 on the GPU backends (one replica per GPU), 0 on the CPU.
    `api_key` and `allowed_hosts` as `sdtrt serve`'s --api-key and --allowed-host; without
    `allowed_hosts` any name is answered (Ray's proxy decides where it listens)."""
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
    guards = ServeOptions(
        api_key=api_key,
        max_steps=max_steps,
        host_names=None if not allowed_hosts else frozenset(),
        allowed_hosts=frozenset(host_name(name) for name in allowed_hosts),
    )
    model = deployment.options(**options).bind(str(directory), workers, queue, guards)
    ingress: Any = SdtrtIngress
    return ingress.options(ray_actor_options={"num_cpus": 0.25}).bind(model, guards)
