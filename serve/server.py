"""Running the app under uvicorn: checks before binding, SIGTERM drains the service."""

from __future__ import annotations

import ipaddress
import logging
import socket
from pathlib import Path
from typing import TYPE_CHECKING

from sdtrt.errors import InputError
from sdtrt.serve.service import Service

if TYPE_CHECKING:
    import uvicorn

log = logging.getLogger(__name__)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_port_free(host: str, port: int) -> None:
    if not 0 < port < 65536:
        raise InputError(f"--port must be 1 to 65535, got {port}")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as error:
        raise InputError(f"cannot resolve --host {host!r}") from error
    family, _, _, _, address = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as error:
            raise InputError(
                f"cannot listen on {host}:{port} ({error.strerror}); choose another --port"
            ) from error


def prepare(
    directory: Path,
    host: str = "127.0.0.1",
    port: int = 7860,
    workers: int | None = None,
    queue: int = 16,
    api_key: str | None = None,
    max_steps: int = 150,
) -> uvicorn.Server:
    """Check everything and make the server; `.run()` serves until SIGINT/SIGTERM, then drains."""
    import uvicorn

    from sdtrt.serve.app import ServeOptions, create_app

    if api_key is not None and not api_key.strip():
        raise InputError("--api-key must not be empty")
    if max_steps < 1:
        raise InputError(f"--max-steps must be at least 1, got {max_steps}")
    service = Service(directory, workers=workers, queue_size=queue)
    check_port_free(host, port)
    if api_key is None and not is_loopback(host):
        log.warning(
            "listening on %s without --api-key: anyone who can reach this address can use "
            "the engines",
            host,
        )
    options = ServeOptions(api_key=api_key, max_steps=max_steps)
    app = create_app(service, options)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="warning",
        # On SIGTERM uvicorn stops accepting, lets open requests finish for this long, then runs
        # the app's shutdown, which drains the jobs that nobody waits on.
        timeout_graceful_shutdown=int(options.drain_timeout_s),
    )
    return uvicorn.Server(config)
