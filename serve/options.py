"""The server's own settings: limits, the key, and which hosts and pages may reach it."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

# The names a loopback server answers to: a page from any other name reached it by DNS rebinding.
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
WILDCARD_ADDRESSES = frozenset({"0.0.0.0", "::", ""})


@dataclass(frozen=True)
class ServeOptions:
    api_key: str | None = None
    max_body_bytes: int = 64 * 1024
    max_image_body_bytes: int = 32 * 2**20  # on the routes that take images
    body_timeout_s: float = 30.0  # for the whole body to arrive once the headers have
    max_steps: int = 150
    max_prompt_chars: int = 2000
    max_images: int = 16  # per A1111 request (batch_size x n_iter)
    drain_timeout_s: float = 30.0
    manage_service: bool = True  # start the service with the app and drain it on shutdown
    # `Host` names answered: the listening address's (None: any, for a wildcard address).
    host_names: frozenset[str] | None = LOOPBACK_NAMES
    # --allowed-host: more names answered, and pages from them may post (a proxy's public name);
    # "*" answers any name.
    allowed_hosts: frozenset[str] = frozenset()
    lora_dir: Path | None = None  # LoRAs by file name, for <lora:NAME:W> and /v1's `loras`


def host_names_for(address: str) -> frozenset[str] | None:
    """The `Host` names a server listening on `address` answers to by itself."""
    if address in WILDCARD_ADDRESSES:
        return None
    name = address.strip("[]").lower()
    return LOOPBACK_NAMES | {name} if is_loopback(name) else frozenset({name})


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
