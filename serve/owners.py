"""Who a job belongs to, read off the request that submitted it."""

from __future__ import annotations

import hashlib

from fastapi import Request


def owner_of(request: Request) -> str:
    """Who a job belongs to: client address, API key, and an optional X-Client-Id refinement."""
    host = request.client.host if request.client else "?"
    key = request.headers.get("authorization", "")
    digest = hashlib.sha256(key.encode()).hexdigest()[:12] if key else "-"
    return f"{host}|{digest}|{request.headers.get('x-client-id', '')}"
