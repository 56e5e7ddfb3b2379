"""SD 3's T5 text encoder at run time: prompts to token ids padded to the call's
max_sequence_length (T5 attends to the padding, so the length is part of the prompt's meaning),
then to the encoder's states. The tokenizer is the model's own tokenizer.json, read with
`tokenizers`; the build checked it id for id against transformers' (export/tokenizer_export.py)."""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from sdtrt.engine.base import Engine
from sdtrt.errors import ArtifactError

if TYPE_CHECKING:
    from tokenizers import Tokenizer

log = logging.getLogger(__name__)


class T5PromptTokenizer:
    """T5's tokenizer: a prompt's pieces, then the end token, truncated and padded to a length."""

    def __init__(self, path: Path) -> None:
        from tokenizers import Tokenizer

        try:
            self._plain = Tokenizer.from_file(str(path))
        except Exception as error:  # tokenizers raises a bare Exception for unreadable files
            raise ArtifactError(f"{path} cannot be read ({error}); rebuild the engines") from error
        self._plain.no_padding()
        self._plain.no_truncation()
        pad_id = self._plain.token_to_id("<pad>")
        if pad_id is None:
            raise ArtifactError(f"{path} is not a T5 tokenizer (no <pad> token); rebuild")
        self.pad_id = int(pad_id)
        self._sized: dict[int, Tokenizer] = {}
        self._lock = threading.Lock()

    def _at(self, length: int) -> Tokenizer:
        """A copy that truncates and pads to `length`, one per length (calls share them)."""
        from tokenizers import Tokenizer as Loaded

        with self._lock:
            sized = self._sized.get(length)
            if sized is None:
                sized = Loaded.from_str(self._plain.to_str())
                sized.enable_truncation(max_length=length)
                sized.enable_padding(length=length, pad_id=self.pad_id, pad_token="<pad>")
                self._sized[length] = sized
            return sized

    def __call__(self, prompts: list[str], length: int) -> np.ndarray:
        """Token ids, shape (len(prompts), length), int32. Warns when a prompt is cut short."""
        encodings = self._at(length).encode_batch(prompts)
        for prompt, encoding in zip(prompts, encodings, strict=True):
            if encoding.overflowing:
                log.warning("prompt truncated to %d T5 tokens: %.60s...", length, prompt)
        return np.array([e.ids for e in encodings], dtype=np.int32)


class T5Conditioner:
    """Runs the T5 encoder engine for a pipeline call."""

    def __init__(self, encoder: Engine, tokenizer: T5PromptTokenizer) -> None:
        self.encoder = encoder
        self.tokenizer = tokenizer

    def encode(self, texts: list[str], length: int) -> np.ndarray:
        """The last hidden state (rows, length, width) for `texts`."""
        ids = self.tokenizer(texts, length)
        return self.encoder.infer({"input_ids": ids})["last_hidden_state"]
