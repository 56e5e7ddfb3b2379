"""Fixtures for the serving tests: one shared live server over the tiny engines."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from serving import LiveServer, live_server

from sdtrt.serve.app import ServeOptions


@pytest.fixture(scope="session")
def server(tiny_engine_dir: Path) -> Iterator[LiveServer]:
    """One shared server (1 worker, queue 4) for tests that leave it as they found it."""
    with live_server(tiny_engine_dir, ServeOptions(max_steps=400)) as live:
        yield live
