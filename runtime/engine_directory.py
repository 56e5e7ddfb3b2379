"""What the runtime reads from an engine directory besides the manifest: the engines, each text
encoder's tokenizer, and the scheduler config the model came with."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sdtrt.engine.backends import load_component
from sdtrt.engine.base import Engine
from sdtrt.engine.manifest import Manifest
from sdtrt.errors import ArtifactError
from sdtrt.runtime.families import family_of
from sdtrt.runtime.t5 import T5PromptTokenizer
from sdtrt.runtime.tokenizer import PromptTokenizer


def load_engine(directory: Path, manifest: Manifest, name: str, backend: str | None) -> Engine:
    """Component `name`'s engine; `backend`, when given, must be the one it was built for."""
    record = manifest.components.get(name)
    if record is None:
        raise ArtifactError(f"{directory} has no {name} engine; rebuild it with `sdtrt build`")
    if backend is not None and backend != record.backend:
        raise ArtifactError(
            f"{directory} holds {record.backend} engines, not {backend}; "
            f"rebuild with `sdtrt build --backend {backend}`"
        )
    return load_component(directory, record)


def read_scheduler_config(directory: Path, manifest: Manifest) -> dict[str, Any]:
    """The scheduler config an engine directory was built with."""
    path = directory / manifest.scheduler_config
    try:
        return dict(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ArtifactError(f"{path} cannot be read ({error}); rebuild the engines") from error


def default_scheduler(scheduler_config: Mapping[str, Any]) -> str:
    """The diffusers class the model's own scheduler config names."""
    return str(scheduler_config.get("_class_name", "PNDMScheduler"))


def load_tokenizers(
    directory: Path, manifest: Manifest
) -> dict[str, PromptTokenizer | T5PromptTokenizer]:
    """Each text encoder's tokenizer by component, in the order the denoiser joins their
    states: CLIP's, and T5's for the encoders the family says have it."""
    t5_encoders = family_of(manifest.model).t5_encoders
    return {
        name: (T5PromptTokenizer if name in t5_encoders else PromptTokenizer)(directory / relative)
        for name, relative in manifest.text_encoders.items()
    }
