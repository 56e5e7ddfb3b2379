"""Serving test helpers: real uvicorn servers on 127.0.0.1 over a service, stopped after use."""

from __future__ import annotations

import base64
import io
import socket
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from PIL import Image

from sdtrt.runtime.pipeline import Pipeline
from sdtrt.serve import Service
from sdtrt.serve.app import ServeOptions, create_app
from sdtrt.serve.models import ModelSet
from sdtrt.serve.server import uvicorn_config

# Denoising steps for quick requests on the tiny engines (a few tens of ms each).
QUICK_STEPS = 3


@dataclass
class LiveServer:
    url: str
    service: Service  # the default model's
    models: ModelSet

    def client(self, **kwargs: object) -> httpx.Client:
        options: dict[str, object] = {"timeout": 60, **kwargs}
        return httpx.Client(base_url=self.url, **options)  # type: ignore[arg-type]


@contextmanager
def live_server(
    engine_dir: Path,
    options: ServeOptions | None = None,
    workers: int = 1,
    queue: int = 4,
    history: int = 64,
    forwarded_allow_ips: str | None = None,
    loader: Callable[[Path], Any] = Pipeline.load,
    header_timeout_s: float = 10.0,
    more_models: Sequence[Path] = (),
    budget_bytes: int | None = None,
) -> Iterator[LiveServer]:
    """uvicorn serving a fresh, warm service on a free loopback port, in a thread here; with
    `more_models`, those engine directories too, loaded on first use."""
    import uvicorn

    def make(folder: Path) -> Service:
        return Service(folder, workers=workers, queue_size=queue, history=history, loader=loader)

    models = ModelSet([engine_dir, *more_models], make, budget_bytes)
    app = create_app(models, options or ServeOptions())
    # IPPROTO_TCP given explicitly: asyncio sets TCP_NODELAY only on sockets that say so, and
    # without it every response waits ~40 ms on the client's delayed ACK.
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    config = uvicorn_config(
        app, "127.0.0.1", port, forwarded_allow_ips, 10, header_timeout_s=header_timeout_s
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, daemon=True)
    thread.start()
    try:
        service = models.get(None)
        service.wait_ready(120)
        yield LiveServer(url=f"http://127.0.0.1:{port}", service=service, models=models)
    finally:
        server.should_exit = True
        thread.join(30)
        listener.close()
        models.shutdown(5)


def decode_png(b64: str) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(b64)))
    image.load()
    return image
