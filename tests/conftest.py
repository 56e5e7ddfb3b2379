"""Shared fixtures: the tiny preset as a diffusers folder and its engines, made once."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest


def _has_gpu() -> bool:
    return shutil.which("nvidia-smi") is not None and Path("/dev/nvidia0").exists()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if _has_gpu():
        return
    skip = pytest.mark.skip(reason="needs an NVIDIA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny preset written as an ordinary diffusers folder."""
    from sdtrt.export.presets import write_preset

    folder = tmp_path_factory.mktemp("models") / "tiny"
    write_preset("tiny", folder)
    return folder


@pytest.fixture(scope="session")
def tiny_engine_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Engines for the tiny model, every component including the VAE encoder. Treat as read-only."""
    from sdtrt.export.build import ExportOptions, build

    output = tmp_path_factory.mktemp("engines") / "tiny"
    components = ("text_encoder", "unet", "vae_decoder", "vae_encoder")
    build(str(tiny_model_dir), output, ExportOptions(components=components))
    return output


@pytest.fixture
def engine_copy(tiny_engine_dir: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny engines, for tests that damage or rebuild them."""
    target = tmp_path / "engines"
    shutil.copytree(tiny_engine_dir, target)
    return target


@pytest.fixture(scope="session")
def diffusers_pipeline(tiny_model_dir: Path):  # type: ignore[no-untyped-def]
    """The tiny model in diffusers' own StableDiffusionPipeline: the reference."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(tiny_model_dir)
    pipe.set_progress_bar_config(disable=True)
    return pipe
