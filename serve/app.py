"""The FastAPI application over a `Service`: /v1, the A1111 subset, probes, metrics, the page.

Every refusal is a 4xx whose JSON `detail` is one line saying what was wrong. No route reads or
writes a path the client gives.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sdtrt import __version__
from sdtrt.errors import InputError, SdtrtError, debugging, first_line
from sdtrt.serve.a1111 import a1111_router
from sdtrt.serve.errors import NotAccepting, QueueFull, UnknownJob
from sdtrt.serve.service import Service
from sdtrt.serve.v1 import v1_router

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServeOptions:
    api_key: str | None = None
    max_body_bytes: int = 64 * 1024
    max_steps: int = 150
    max_prompt_chars: int = 2000
    max_images: int = 16  # per A1111 request (batch_size x n_iter)
    drain_timeout_s: float = 30.0
    manage_service: bool = True  # start the service with the app and drain it on shutdown


# Static, data-free routes a browser must load before it can send a key.
_OPEN_PATHS = ("/healthz", "/", "/docs", "/openapi.json", "/docs/oauth2-redirect")


def _trace(error: BaseException) -> None:
    """The traceback behind a one-line answer, in the server's log, with SDTRT_DEBUG=1."""
    if debugging():
        log.error("%s", first_line(error), exc_info=error)


def _problem(status: int, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)


class _Guard:
    """Body-size limit and bearer-key check, ahead of routing (pure ASGI: no body re-reads)."""

    def __init__(self, app: ASGIApp, options: ServeOptions) -> None:
        self.app = app
        self.options = options

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        key = self.options.api_key
        if key is not None and scope["path"] not in _OPEN_PATHS:
            given = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1")
            if not secrets.compare_digest(given.encode(), f"Bearer {key}".encode()):
                response = _problem(
                    401,
                    "missing or wrong API key; send the header 'Authorization: Bearer KEY'",
                    {"WWW-Authenticate": "Bearer"},
                )
                await response(scope, receive, send)
                return
        limit = self.options.max_body_bytes
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await _problem(413, f"the body is over the {limit}-byte limit")(scope, receive, send)
            return
        # Without a declared length (chunked), read up to the limit before the app sees it.
        body = bytearray()
        messages: list[Message] = []
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break
            body += message.get("body", b"")
            if len(body) > limit:
                await _problem(413, f"the body is over the {limit}-byte limit")(
                    scope, receive, send
                )
                return
            if not message.get("more_body", False):
                break

        async def replay() -> Message:
            return messages.pop(0) if messages else await receive()

        await self.app(scope, replay, send)


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


def create_app(service: Service, options: ServeOptions | None = None) -> FastAPI:
    options = options or ServeOptions()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if options.manage_service:
            service.start()
        yield
        if options.manage_service:
            import anyio.to_thread

            await anyio.to_thread.run_sync(service.shutdown, options.drain_timeout_s)

    app = FastAPI(
        title="sdtrt",
        version=__version__,
        description="Stable Diffusion engines as a service: /v1 API, A1111-compatible /sdapi/v1.",
        lifespan=lifespan,
    )
    app.state.service = service
    app.state.options = options

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, error: RequestValidationError) -> JSONResponse:
        return _problem(422, _validation_line(error))

    @app.exception_handler(UnknownJob)
    async def unknown(_: Request, error: UnknownJob) -> JSONResponse:
        return _problem(404, str(error))

    @app.exception_handler(InputError)
    async def bad_input(_: Request, error: InputError) -> JSONResponse:
        _trace(error)
        return _problem(400, str(error))

    @app.exception_handler(QueueFull)
    async def full(_: Request, error: QueueFull) -> JSONResponse:
        return _problem(429, str(error), {"Retry-After": str(error.retry_after)})

    @app.exception_handler(NotAccepting)
    async def not_accepting(_: Request, error: NotAccepting) -> JSONResponse:
        return _problem(503, str(error), {"Retry-After": str(error.retry_after)})

    @app.exception_handler(SdtrtError)
    async def failed(_: Request, error: SdtrtError) -> JSONResponse:
        _trace(error)
        return _problem(500, str(error))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, error: StarletteHTTPException) -> JSONResponse:
        return _problem(error.status_code, str(error.detail), dict(error.headers or {}))

    @app.get("/healthz", tags=["probes"])
    def healthz() -> dict[str, str]:
        """The process is up (says nothing about the engines)."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["probes"])
    def readyz() -> JSONResponse:
        """200 once every worker has loaded and warmed up; 503 before, and while draining."""
        if service.state == "ready":
            return JSONResponse({"status": "ready"})
        body = {"status": service.state, "detail": service.failure or service.state}
        return JSONResponse(body, status_code=503, headers={"Retry-After": "5"})

    @app.get("/metrics", tags=["probes"])
    def metrics() -> Response:
        """Prometheus text format: queue depth, running, jobs by outcome, seconds per stage."""
        return Response(generate_latest(service.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    page = resources.files("sdtrt.serve").joinpath("static/index.html").read_text("utf-8")

    @app.get("/", include_in_schema=False)
    def index() -> HTMLResponse:
        return HTMLResponse(page)

    app.include_router(v1_router)
    app.include_router(a1111_router)
    app.add_middleware(_Guard, options=options)
    return app
