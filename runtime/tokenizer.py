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
            raise ArtifactError(f"{path} cannot be read ({error}); rebuild the engines") from error
        padding = self._tokenizer.padding
        if not padding or not padding.get("length"):
            raise ArtifactError(f"{path} has no fixed padding length; rebuild the engines")
        self.length = int(padding["length"])
        self.pad_id = int(padding["pad_id"])
        # The same tokenizer without truncation, padding or start/end tokens: a prompt's own
        # tokens, for counting what truncation drops and for prompts split into chunks.
        self._plain = Tokenizer.from_str(self._tokenizer.to_str())
        self._plain.no_truncation()
        self._plain.no_padding()
        framed = self._plain.encode("").ids  # the start and end tokens around nothing
        if len(framed) != 2:
            raise ArtifactError(f"{path} does not frame prompts in start and end tokens")
        self.start_id, self.end_id = int(framed[0]), int(framed[1])

    def add_tokens(self, tokens: list[str]) -> None:
        """Add new whole-string tokens (textual-inversion words), matched in the prompt as
        written, before the model's own splitting, as transformers' tokenizers add them; their
        ids follow the vocabulary."""
        from tokenizers import AddedToken

        added = [AddedToken(token, normalized=False) for token in tokens]
        for tokenizer in (self._tokenizer, self._plain):
            tokenizer.add_tokens(added)

    def tokens(self, texts: list[str]) -> list[list[int]]:
        """Each text's token ids, without start/end tokens, truncation or padding."""
        return [e.ids for e in self._plain.encode_batch(texts, add_special_tokens=False)]

    def token_id(self, token: str) -> int | None:
        found = self._tokenizer.token_to_id(token)
        return None if found is None else int(found)

    def __call__(self, prompts: list[str]) -> np.ndarray:
        """Token ids, shape (len(prompts), length), int32. Warns when a prompt is cut short."""
        encodings = self._tokenizer.encode_batch(prompts)
        for prompt, encoding in zip(prompts, encodings, strict=True):
            if encoding.overflowing:
                # The overflow pieces come padded and framed, so they do not count what was
                # lost; the prompt's own tokens beyond those that fit between start and end do.
                kept = self.length - 2
                dropped = len(self.tokens([prompt])[0]) - kept
                log.warning(
                    "prompt truncated to %d tokens (%d tokens dropped): %.60s...",
                    self.length,
                    dropped,
                    prompt,
                )
        return np.array([e.ids for e in encodings], dtype=np.int32)
