"""Running the app under uvicorn: checks before binding, SIGTERM drains the service."""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from sdtrt.errors import InputError
from sdtrt.runtime.pipeline import Pipeline
from sdtrt.runtime.textual_inversion import load_folder
from sdtrt.serve.guards import host_name
from sdtrt.serve.models import ModelSet
from sdtrt.serve.options import ServeOptions, host_names_for, is_loopback
from sdtrt.serve.service import Service

if TYPE_CHECKING:
    import uvicorn

log = logging.getLogger(__name__)


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


def read_api_key(key: str | None, key_file: Path | None) -> str | None:
    """The key from --api-key (or SDTRT_API_KEY) or from --api-key-file, which `ps` cannot show."""
    if key is not None and key_file is not None:
        raise InputError("give --api-key or --api-key-file, not both")
    if key_file is not None:
        try:
            key = key_file.read_text("utf-8").strip()
        except (OSError, UnicodeDecodeError) as error:
            raise InputError(f"cannot read --api-key-file {key_file}: {error}") from error
        if not key:
            raise InputError(f"--api-key-file {key_file} is empty")
    if key is not None and not key.strip():
        raise InputError("--api-key must not be empty")
    return key


def uvicorn_config(
    app: object,
    host: str,
    port: int,
    forwarded_allow_ips: str | None = None,
    drain_timeout_s: float = 30.0,
    header_timeout_s: float = 10.0,
    max_connections: int = 1000,
) -> uvicorn.Config:
    """How uvicorn runs the app: X-Forwarded-For and -Proto are read only from the proxies
    named (else anyone could claim any address, and with it another client's jobs); a request's
    headers must be in within `header_timeout_s`, and past `max_connections` open connections
    new requests get 503 (so slow clients cannot hold the server's connections)."""
    import uvicorn

    from sdtrt.serve.connections import header_deadline_protocol

    return uvicorn.Config(
        app,  # type: ignore[arg-type]
        host=host,
        port=port,
        log_level="warning",
        http=header_deadline_protocol(header_timeout_s),
        limit_concurrency=max_connections,
        proxy_headers=forwarded_allow_ips is not None,
        forwarded_allow_ips=forwarded_allow_ips,
        # On SIGTERM uvicorn stops accepting, lets open requests finish for this long, then runs
        # the app's shutdown, which drains the jobs that nobody waits on.
        timeout_graceful_shutdown=int(drain_timeout_s),
    )


def _budget(gib: float | None) -> int:
    """The memory the models' engines may hold: as asked, else three quarters of this machine's."""
    import psutil

    return int(gib * 2**30) if gib is not None else int(0.75 * psutil.virtual_memory().total)


def embedding_loader(folder: Path, allow_pickle: bool = False) -> Callable[[Path], Pipeline]:
    """Pipeline.load, then every embedding of `folder` this model takes (A1111's embeddings
    folder: a prompt's word that names one uses it); pickles only with `allow_pickle`."""

    def load(directory: Path) -> Pipeline:
        pipe = Pipeline.load(directory)
        try:
            load_folder(folder, pipe.load_textual_inversion, allow_pickle)
        except BaseException:
            pipe.close()
            raise
        return pipe

    return load


def prepare(
    directories: Path | Sequence[Path],
    host: str = "127.0.0.1",
    port: int = 7860,
    workers: int | None = None,
    queue: int = 16,
    api_key: str | None = None,
    max_steps: int = 150,
    allowed_hosts: tuple[str, ...] = (),
    forwarded_allow_ips: str | None = None,
    lora_dir: Path | None = None,
    memory_budget_gib: float | None = None,
    embeddings_dir: Path | None = None,
    allow_pickle: bool = False,
) -> uvicorn.Server:
    """Check everything and make the server; `.run()` serves until SIGINT/SIGTERM, then drains."""
    import uvicorn

    from sdtrt.serve.app import create_app

    if api_key is not None and not api_key.strip():
        raise InputError("--api-key must not be empty")
    if max_steps < 1:
        raise InputError(f"--max-steps must be at least 1, got {max_steps}")
    names = frozenset(host_name(name) for name in allowed_hosts)
    if "" in names:
        raise InputError("--allowed-host must not be empty")
    if memory_budget_gib is not None and not memory_budget_gib > 0:
        raise InputError(
            f"--memory-budget must be a positive number of GiB, got {memory_budget_gib}"
        )
    folders = [directories] if isinstance(directories, Path) else list(directories)
    if not folders:
        raise InputError("name at least one engine directory to serve")
    if embeddings_dir is not None and not embeddings_dir.is_dir():
        raise InputError(f"--embeddings-dir {embeddings_dir} is not a folder")
    loader = (
        Pipeline.load if embeddings_dir is None else embedding_loader(embeddings_dir, allow_pickle)
    )
    models = ModelSet(
        folders,
        lambda folder: Service(folder, workers=workers, queue_size=queue, loader=loader),
        budget_bytes=_budget(memory_budget_gib),
    )
    models.check_default()  # its settings checked now; it starts with the app
    check_port_free(host, port)
    if api_key is None and not is_loopback(host):
        log.warning(
            "listening on %s without --api-key: anyone who can reach this address can use "
            "the engines",
            host,
        )
    options = ServeOptions(
        api_key=api_key,
        max_steps=max_steps,
        host_names=host_names_for(host),
        allowed_hosts=names,
        lora_dir=lora_dir,
    )
    app = create_app(models, options)
    config = uvicorn_config(app, host, port, forwarded_allow_ips, options.drain_timeout_s)
    return uvicorn.Server(config)
