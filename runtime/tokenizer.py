"""Prompts to token ids, from the engine directory's tokenizer.json (no transformers needed)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from sdtrt.errors import ArtifactError

log = logging.getLogger(__name__)


class PromptTokenizer:
    """Pads and truncates to the text encoder's length exactly as the model's own tokenizer does."""

    def __init__(self, path: Path) -> None:
        from tokenizers import Tokenizer

        try:
            self._tokenizer = Tokenizer.from_file(str(path))
        except Exception as error:  # tokenizers raises a bare Exception for unreadable files
            raise ArtifactError(f"{path} cannot be read ({error}); rebuild the engines") from None
        padding = self._tokenizer.padding
        if not padding or not padding.get("length"):
            raise ArtifactError(f"{path} has no fixed padding length; rebuild the engines")
        self.length = int(padding["length"])

    def __call__(self, prompts: list[str]) -> np.ndarray:
        """Token ids, shape (len(prompts), length), int32. Warns when a prompt is cut short."""
        encodings = self._tokenizer.encode_batch(prompts)
        for prompt, encoding in zip(prompts, encodings, strict=True):
            if encoding.overflowing:
                dropped = sum(len(o.ids) for o in encoding.overflowing)
                log.warning(
                    "prompt truncated to %d tokens (about %d tokens dropped): %.60s...",
                    self.length,
                    dropped,
                    prompt,
                )
        return np.array([e.ids for e in encodings], dtype=np.int32)
