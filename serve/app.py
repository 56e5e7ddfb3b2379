"""The FastAPI application over a `Service`: /v1, the A1111 subset, probes, metrics, the page.

Every refusal is a 4xx whose JSON `detail` is one line saying what was wrong. No route reads or
writes a path the client gives.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from sdtrt import __version__
from sdtrt.errors import InputError, SdtrtError, debugging, first_line
from sdtrt.runtime.lora_library import LoraLibrary
from sdtrt.serve.a1111 import a1111_router
from sdtrt.serve.controlnet_units import controlnet_router
from sdtrt.serve.errors import NotAccepting, QueueFull, UnknownJob
from sdtrt.serve.guards import Guard, problem
from sdtrt.serve.models import ModelSet
from sdtrt.serve.openai_images import openai_router
from sdtrt.serve.options import ServeOptions
from sdtrt.serve.service import Service
from sdtrt.serve.v1 import v1_router

log = logging.getLogger(__name__)


def _trace(error: BaseException) -> None:
    """The traceback behind a one-line answer, in the server's log, with SDTRT_DEBUG=1."""
    if debugging():
        log.error("%s", first_line(error), exc_info=error)


def _validation_line(error: RequestValidationError) -> str:
    first = error.errors()[0]
    if first.get("type") == "json_invalid":
        return f"the body is not valid JSON: {first.get('ctx', {}).get('error', first['msg'])}"
    where = ".".join(str(part) for part in first.get("loc", ()) if part != "body")
    if not where and first.get("type") in ("model_attributes_type", "dict_type"):
        return "the body must be a JSON object (Content-Type: application/json); see /docs"
    message = first.get("msg", "invalid value")
    if first.get("type") == "extra_forbidden":
        message = "unknown field; see /docs for the fields this route takes"
    count = len(error.errors())
    more = f" (and {count - 1} more problems)" if count > 1 else ""
    return f"{where or 'body'}: {message}{more}"


def create_app(served: Service | ModelSet, options: ServeOptions | None = None) -> FastAPI:
    """The app over one service, or over a set of models (the first the default)."""
    options = options or ServeOptions()
    models = ModelSet.of(served) if isinstance(served, Service) else served

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if options.manage_service:
            models.start()
        yield
        if options.manage_service:
            import anyio.to_thread

            await anyio.to_thread.run_sync(models.shutdown, options.drain_timeout_s)

    app = FastAPI(
        title="sdtrt",
        version=__version__,
        description="Stable Diffusion engines as a service: /v1 API, A1111-compatible /sdapi/v1.",
        lifespan=lifespan,
    )
    app.state.models = models
    app.state.options = options
    app.state.loras = LoraLibrary(options.lora_dir)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, error: RequestValidationError) -> JSONResponse:
        return problem(422, _validation_line(error))

    @app.exception_handler(UnknownJob)
    async def unknown(_: Request, error: UnknownJob) -> JSONResponse:
        return problem(404, str(error))

    @app.exception_handler(InputError)
    async def bad_input(_: Request, error: InputError) -> JSONResponse:
        _trace(error)
        return problem(400, str(error))

    @app.exception_handler(QueueFull)
    async def full(_: Request, error: QueueFull) -> JSONResponse:
        return problem(429, str(error), {"Retry-After": str(error.retry_after)})

    @app.exception_handler(NotAccepting)
    async def not_accepting(_: Request, error: NotAccepting) -> JSONResponse:
        return problem(503, str(error), {"Retry-After": str(error.retry_after)})

    @app.exception_handler(SdtrtError)
    async def failed(_: Request, error: SdtrtError) -> JSONResponse:
        _trace(error)
        return problem(500, str(error))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, error: StarletteHTTPException) -> JSONResponse:
        return problem(error.status_code, str(error.detail), dict(error.headers or {}))

    @app.get("/healthz", tags=["probes"])
    def healthz() -> dict[str, str]:
        """The process is up (says nothing about the engines)."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["probes"])
    def readyz() -> JSONResponse:
        """200 once every worker has loaded and warmed up; 503 before, and while draining."""
        service = models.get(None)
        if service.state == "ready":
            return JSONResponse({"status": "ready"})
        body = {"status": service.state, "detail": service.failure or service.state}
        return JSONResponse(body, status_code=503, headers={"Retry-After": "5"})

    @app.get("/metrics", tags=["probes"])
    def metrics() -> Response:
        """Prometheus text format: queue depth, running, jobs by outcome, seconds per stage."""
        registry = models.get(None).metrics.registry  # the default model's
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    page = resources.files("sdtrt.serve").joinpath("static/index.html").read_text("utf-8")

    @app.get("/", include_in_schema=False)
    def index() -> HTMLResponse:
        return HTMLResponse(page)

    app.include_router(v1_router)
    app.include_router(openai_router)
    app.include_router(a1111_router)
    app.include_router(controlnet_router)
    app.add_middleware(Guard, options=options)
    return app
