"""Fixtures of the export tests: the tiny model made to overflow fp16."""

from __future__ import annotations

from pathlib import Path

import pytest
from overflow_model import write_overflow_model


@pytest.fixture(scope="session")
def overflow_model_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model with one attention projection and one VAE up-block scaled past fp16."""
    return write_overflow_model(tiny_model_dir, tmp_path_factory.mktemp("overflow") / "model")
