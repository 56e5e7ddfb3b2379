"""LoRAs by name: the `.safetensors` files of a `--lora-dir` folder (`sdtrt run` and `sdtrt
serve`), asked for with A1111's `<lora:NAME:WEIGHT>` tags in a prompt (or /v1's `loras` field).
A server's worker switches its engines' weights only when a job asks for a set other than the
one it has."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from pathlib import Path

from sdtrt.engine.weights.lora import LoraSource
from sdtrt.errors import InputError

# A1111's extra-network syntax for LoRAs: <lora:NAME> or <lora:NAME:WEIGHT>.
TAG = re.compile(r"<lora:([^:>]+)(?::([^:>]*))?>", re.IGNORECASE)


class LoraLibrary:
    """The LoRA files of a folder (and its sub-folders), by file name without `.safetensors`."""

    def __init__(self, folder: Path | None) -> None:
        self.folder = folder
        self.files: dict[str, Path] = {}
        self.refresh()

    def refresh(self) -> None:
        if self.folder is None:
            return
        if not self.folder.is_dir():
            raise InputError(f"--lora-dir {self.folder} is not a folder")
        found = sorted(self.folder.rglob("*.safetensors"))
        self.files = {path.stem: path for path in found}

    def sources(self, weights: Mapping[str, float]) -> tuple[LoraSource, ...]:
        """The LoRAs named, at their weights (zero weights left out), in name order."""
        chosen = []
        for name, weight in sorted(weights.items()):
            if name not in self.files:
                known = ", ".join(self.files) or "none: name a folder of them with --lora-dir"
                raise InputError(f"unknown LoRA {name!r}; --lora-dir has: {known}")
            if not math.isfinite(weight):
                raise InputError(f"LoRA {name!r} weight must be a finite number, got {weight}")
            if weight != 0:
                chosen.append(LoraSource(path=self.files[name], scale=weight))
        return tuple(chosen)


def take_tags(prompt: str) -> tuple[str, dict[str, float]]:
    """The prompt without its `<lora:NAME:WEIGHT>` tags, and the weights they ask (1 if none;
    a name given twice, its weights added, as A1111 does)."""
    weights: dict[str, float] = {}
    for match in TAG.finditer(prompt):
        name, text = match.group(1).strip(), (match.group(2) or "").strip()
        try:
            weight = float(text) if text else 1.0
        except ValueError as error:
            raise InputError(f"the weight of <lora:{name}:{text}> is not a number") from error
        weights[name] = weights.get(name, 0.0) + weight
    return TAG.sub("", prompt).strip(), weights
