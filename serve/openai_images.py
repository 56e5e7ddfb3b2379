"""OpenAI's images API, the part that makes images from a prompt: `POST /v1/images/generations`.

Any OpenAI client (or tool built on one) pointed at this server (`base_url=http://HOST/v1`)
draws with these engines. Its fields map onto `/v1/txt2img`'s: `n` images from one batched
call, `size` as "WIDTHxHEIGHT" ("auto": the model's native size), `response_format` "b64_json"
(this server keeps no image files to link to). sdtrt's own fields come as extensions in the body
(`extra_body=` in OpenAI's Python client): `negative_prompt`, `steps`, `guidance`, `seed`,
`scheduler`. Errors come in OpenAI's shape (`error.message`) and in sdtrt's (`detail`).
"""

from __future__ import annotations

import base64
import time
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Strict, ValidationError

from sdtrt.errors import InputError
from sdtrt.serve.errors import NotAccepting, QueueFull
from sdtrt.serve.jobs import GenerationParams, JobState
from sdtrt.serve.owners import owner_of
from sdtrt.serve.schemas import Int, Number, Seed
from sdtrt.serve.v1 import check_limits
from sdtrt.serve.waiting import service_for, wait_or_cancel

openai_router = APIRouter(prefix="/v1/images", tags=["OpenAI images API"])


class ImagesGeneration(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prompt: Annotated[str, Strict()]
    model: Annotated[str, Strict()] | None = None
    n: Int = 1
    size: Annotated[str, Strict()] | None = None
    response_format: Literal["b64_json", "url"] | None = None
    output_format: Literal["png", "jpeg", "webp"] | None = None
    stream: bool | None = None
    # sdtrt's own, as extensions
    negative_prompt: Annotated[str, Strict()] = ""
    steps: Int = 30
    guidance: Number | None = None
    seed: Seed | None = None
    scheduler: Annotated[str, Strict()] | None = None
    # OpenAI's, choosing among its own models' options: accepted and ignored
    quality: Any = None
    style: Any = None
    background: Any = None
    moderation: Any = None
    output_compression: Any = None
    user: Any = None
    safety_identifier: Any = None


def _error(status: int, message: str, param: str | None = None) -> JSONResponse:
    kind = "invalid_request_error" if status < 500 else "server_error"
    error = {"message": message, "type": kind, "param": param, "code": None}
    return JSONResponse({"error": error, "detail": message}, status_code=status)


def _size(text: str | None) -> tuple[int | None, int | None]:
    """(height, width) of "WIDTHxHEIGHT"; None for the model's own."""
    if text is None or text == "auto":
        return None, None
    width, _, height = text.lower().partition("x")
    if not (width.isdigit() and height.isdigit()):
        raise InputError(f"size must be WIDTHxHEIGHT (512x512, say) or auto, got {text!r}")
    return int(height), int(width)


def _check(body: ImagesGeneration) -> None:
    if body.response_format == "url":
        raise InputError("response_format must be b64_json: this server keeps no image files")
    if body.output_format not in (None, "png"):
        raise InputError("output_format must be png")
    if body.stream:
        raise InputError("stream is not supported; follow /v1/jobs/{id}/events for progress")


@openai_router.post("/generations")
async def generations(request: Request) -> JSONResponse:
    """Images from a prompt, as OpenAI's `images.generate` asks for them."""
    options = request.app.state.options
    try:
        body = ImagesGeneration.model_validate(await request.json())
    except ValidationError as error:
        problem = error.errors()[0]
        where = ".".join(str(part) for part in problem["loc"])
        return _error(400, f"{where}: {problem['msg']}", where or None)
    except ValueError:
        return _error(400, "the body must be a JSON object")
    try:
        service = await service_for(request, body.model)
        _check(body)
        check_limits(options, body.prompt, body.negative_prompt, body.steps)
        if not 1 <= body.n <= options.max_images:
            raise InputError(f"n must be 1 to {options.max_images}, got {body.n}")
        height, width = _size(body.size)
        params = GenerationParams(
            prompt=body.prompt,
            negative_prompt=body.negative_prompt,
            steps=body.steps,
            guidance=body.guidance,
            seed=body.seed,
            height=height,
            width=width,
            scheduler=body.scheduler,
            images=body.n,
        )
        job = service.submit(params, owner=owner_of(request))
    except (QueueFull, NotAccepting) as error:
        answer = _error(429 if isinstance(error, QueueFull) else 503, str(error))
        answer.headers["Retry-After"] = str(error.retry_after)
        return answer
    except InputError as error:
        return _error(400, str(error))
    await wait_or_cancel(request, service, job)
    service.forget(job)
    if job.state is not JobState.SUCCEEDED or job.result is None:
        status = {JobState.EXPIRED: 408, JobState.CANCELLED: 409}.get(job.state, 500)
        return _error(status, job.error or job.state.value)
    first = job.calls[0]
    return JSONResponse(
        {
            "created": int(time.time()),
            "data": [
                {"b64_json": base64.b64encode(png).decode("ascii"), "revised_prompt": None}
                for png in job.result.pngs
            ],
            "output_format": "png",
            "size": f"{first.width}x{first.height}",
            "seeds": job.result.seeds,  # sdtrt's: remake an image with its seed
        }
    )
