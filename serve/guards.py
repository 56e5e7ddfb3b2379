"""What every request passes before routing (pure ASGI, so the body is read once): the API key,
the `Host` it was sent to, where a state-changing request came from, its content type, and its
body's size and arrival time.

A server on 127.0.0.1 is reachable by every web page its user opens: a page may post to it
(without reading the answer) and, by DNS rebinding, make its own name resolve there. So a
`Host` the server does not answer to is refused (400), a request that changes state from
another site's page is refused (403), and a body that is not JSON is refused (415): a page can
send `text/plain` or form bodies anywhere without asking, but not `application/json`.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Mapping
from urllib.parse import urlsplit

from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sdtrt.serve.options import ServeOptions

# Static, data-free routes a browser must load before it can send a key.
OPEN_PATHS = ("/healthz", "/", "/docs", "/openapi.json", "/docs/oauth2-redirect")
STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# Routes whose bodies carry images, allowed ServeOptions.max_image_body_bytes.
IMAGE_ROUTES = ("/v1/img2img", "/sdapi/v1/img2img")


def body_limit(path: str, options: ServeOptions) -> int:
    return options.max_image_body_bytes if path in IMAGE_ROUTES else options.max_body_bytes


def problem(status: int, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)


def host_name(authority: str) -> str:
    """'example.com' of 'Example.com:7860', '::1' of '[::1]:7860'."""
    authority = authority.strip().lower()
    if authority.startswith("["):
        return authority[1 : authority.find("]")]
    name = authority.rsplit(":", 1)[0] if authority.count(":") == 1 else authority
    return name.rstrip(".")


def is_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or media.endswith("+json")


def refusal(
    method: str, path: str, headers: Mapping[str, str], options: ServeOptions
) -> JSONResponse | None:
    """The answer to a request refused on its headers alone (None: go on). `headers` have
    lower-case names."""
    host = headers.get("host", "")
    if not _answers(host_name(host), options):
        return problem(
            400,
            f"this server does not answer to the name {host_name(host)!r}; start it with "
            "--allowed-host NAME to add one",
        )
    if method in STATE_CHANGING and _cross_site(host, headers, options):
        return problem(403, "requests from another site's page are refused")
    key = options.api_key
    if key is not None and path not in OPEN_PATHS:
        given = headers.get("authorization", "")
        if not secrets.compare_digest(given.encode(), f"Bearer {key}".encode()):
            return problem(
                401,
                "missing or wrong API key; send the header 'Authorization: Bearer KEY'",
                {"WWW-Authenticate": "Bearer"},
            )
    limit = body_limit(path, options)
    declared = headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        return problem(413, f"the body is over the {limit}-byte limit")
    return None


def body_refusal(
    path: str, body: bytes, headers: Mapping[str, str], options: ServeOptions
) -> JSONResponse | None:
    """The answer to a body too big, or not JSON (None: go on)."""
    limit = body_limit(path, options)
    if len(body) > limit:
        return problem(413, f"the body is over the {limit}-byte limit")
    if body and not is_json(headers.get("content-type", "")):
        return problem(415, "the body must be JSON, sent as Content-Type: application/json")
    return None


def _answers(name: str, options: ServeOptions) -> bool:
    allowed = options.allowed_hosts
    known = options.host_names
    return known is None or name in known or name in allowed or "*" in allowed


def _cross_site(host: str, headers: Mapping[str, str], options: ServeOptions) -> bool:
    """A browser's request from a page of another origin. Clients that are not browsers send
    no `Origin`; browsers send it on every POST, PUT, PATCH and DELETE."""
    if headers.get("sec-fetch-site") == "cross-site":
        return True
    origin = headers.get("origin")
    if origin is None:
        return False
    authority = urlsplit(origin).netloc.lower()
    if not authority:  # "null": a sandboxed page, a file, a redirect from elsewhere
        return True
    return authority != host.strip().lower() and host_name(authority) not in options.allowed_hosts


class Guard:
    """The checks above as ASGI middleware, ahead of routing."""

    def __init__(self, app: ASGIApp, options: ServeOptions) -> None:
        self.app = app
        self.options = options

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        refused = refusal(scope["method"], scope["path"], headers, self.options)
        if refused is not None:
            await refused(scope, receive, send)
            return
        messages = await self._read_body(receive, body_limit(scope["path"], self.options))
        if isinstance(messages, JSONResponse):
            await messages(scope, receive, send)
            return
        body = b"".join(message.get("body", b"") for message in messages)
        refused = body_refusal(scope["path"], body, headers, self.options)
        if refused is not None:
            await refused(scope, receive, send)
            return

        async def replay() -> Message:
            return messages.pop(0) if messages else await receive()

        await self.app(scope, replay, send)

    async def _read_body(self, receive: Receive, limit: int) -> list[Message] | JSONResponse:
        """The request's messages up to the end of its body, or the refusal of a body too big
        or too slow (without a declared length, a chunked body is counted as it comes)."""
        options = self.options
        loop = asyncio.get_running_loop()
        deadline = loop.time() + options.body_timeout_s
        size = 0
        messages: list[Message] = []
        while True:
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - loop.time()))
            except TimeoutError:
                return problem(
                    408,
                    f"the body did not arrive within {options.body_timeout_s:g} s",
                    {"Connection": "close"},
                )
            messages.append(message)
            if message["type"] != "http.request":
                return messages
            size += len(message.get("body", b""))
            if size > limit:
                return problem(413, f"the body is over the {limit}-byte limit")
            if not message.get("more_body", False):
                return messages
