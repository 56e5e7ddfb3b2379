"""Prompts to the text states the UNet attends to: diffusers' way or the A1111 web UI's.

- "diffusers" (the default): each prompt truncated to the text encoder's length, one text
  encoder call; `clip_skip` applies to the prompts and not the negative prompts, exactly as in
  diffusers' StableDiffusionPipeline.
- "a1111": the web UI's syntax (see prompt_syntax.py). Each prompt becomes chunks of
  `length - 2` tokens, each chunk framed by start/end tokens and padded as the model pads, run
  through the text encoder on its own; the states are multiplied by the token weights, rescaled
  so that their mean is the unweighted one, and the chunks joined along the sequence. Prompts
  with fewer chunks than the longest prompt (or negative prompt) get empty chunks. `clip_skip`
  applies to every prompt, negative ones too, as in the web UI. One departure: the web UI
  restores the mean over all prompts of a batch together; here over each prompt, so that a
  prompt's image does not depend on what else is in its batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sdtrt.engine.base import Engine
from sdtrt.engine.tensors import ADDED_EMBEDDINGS, MAX_ADDED_TOKENS
from sdtrt.errors import InputError
from sdtrt.runtime.prompt_syntax import Chunk, PromptSyntax, parse_prompt, split_chunks
from sdtrt.runtime.textual_inversion import expand_prompt
from sdtrt.runtime.tokenizer import PromptTokenizer

# The text encoder output clip skip reads (see export/specs/text_encoders.py).
LAYER_STATES = "layer_states"
# SDXL's encoders: every layer's input, not normalised; the UNet reads the penultimate one.
HIDDEN_STATES = "hidden_states"
POOLED = "text_embeds"  # SDXL's second encoder: the projected pooled output


def apply_weights(states: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Token weights into text states (rows, tokens, width), each row's mean kept: the web UI's
    "original" emphasis, `z * w` rescaled by `mean(z) / mean(z * w)`."""
    original = states.mean(axis=(1, 2), dtype=np.float64, keepdims=True)
    weighted = states * weights[:, :, None].astype(states.dtype)
    scale = original / weighted.mean(axis=(1, 2), dtype=np.float64, keepdims=True)
    return weighted * scale.astype(states.dtype)


@dataclass(frozen=True)
class TokenChunk:
    """One text-encoder call: ids (rows, length) and, in the A1111 syntax, their weights."""

    ids: np.ndarray
    weights: np.ndarray | None


class TextConditioner:
    """Runs the text encoder engine for a pipeline call."""

    def __init__(self, encoder: Engine, tokenizer: PromptTokenizer, max_chunks: int) -> None:
        """`max_chunks`: the text-encoder lengths the UNet was built to attend to."""
        self.encoder = encoder
        self.tokenizer = tokenizer
        self.max_chunks = max_chunks
        outputs = {t.name: t for t in encoder.outputs}
        # SD: the last state, or with clip skip a normalised earlier one. SDXL: the input of
        # layer `layers - 1` (transformers' hidden_states[-2]), or an earlier one.
        self.layer_output = HIDDEN_STATES if HIDDEN_STATES in outputs else LAYER_STATES
        layer_states = outputs.get(self.layer_output)
        self.layers = None if layer_states is None else int(layer_states.shape[1])
        self.default_layer: int | None = None
        if self.layer_output == HIDDEN_STATES and self.layers is not None:
            self.default_layer = self.layers - 1
        self.pooled = POOLED in outputs
        self.comma_id = tokenizer.token_id(",</w>")
        # Textual-inversion rows after the model's token table, and the words they spell out.
        self.added_input = next((t for t in encoder.inputs if t.name == ADDED_EMBEDDINGS), None)
        self.added: list[np.ndarray] = []
        self.words: dict[str, str] = {}

    @property
    def width(self) -> int | None:
        """The width of its token embeddings; None for engines built without added rows."""
        return None if self.added_input is None else int(self.added_input.shape[1])

    def check_embedding(self, tokens: list[str]) -> None:
        """Refuse, in one line, an embedding of `tokens` that this encoder cannot take."""
        if self.added_input is None:
            raise InputError(
                "these engines were built before textual-inversion embeddings; rebuild them "
                "with this sdtrt (`sdtrt build`) to load one"
            )
        if len(self.added) + len(tokens) > MAX_ADDED_TOKENS:
            raise InputError(
                f"these engines take {MAX_ADDED_TOKENS} embedding vectors in all; "
                f"{len(self.added)} are loaded and this one has {len(tokens)}"
            )
        taken = [token for token in tokens if self.tokenizer.token_id(token) is not None]
        if taken:
            raise InputError(
                f"the token {taken[0]!r} is already in this model's vocabulary; give the "
                "embedding another word (API: token=)"
            )

    def add_embedding(self, tokens: list[str], vectors: np.ndarray) -> None:
        """Make `tokens` (a word, then its further vectors' tokens) mean `vectors`."""
        self.check_embedding(tokens)
        self.added.extend(vectors.astype(np.float32))  # the rows before the ids that pick them
        self.tokenizer.add_tokens(tokens)
        if len(tokens) > 1:
            self.words[tokens[0]] = " ".join(tokens)

    def _added_rows(self) -> np.ndarray:
        """The rows to feed: those loaded, padded with zeros to the fewest the engine takes."""
        assert self.added_input is not None and self.width is not None
        fewest = int(self.encoder.io.profile[ADDED_EMBEDDINGS].min[0])
        rows = np.zeros((max(len(self.added), fewest), self.width), np.float32)
        if self.added:
            rows[: len(self.added)] = np.stack(self.added)
        return rows

    def check_clip_skip(self, clip_skip: int | None) -> int | None:
        """The layer `clip_skip` reads (an index into the layer output); None for the last
        state of an SD text encoder."""
        if not clip_skip:
            return self.default_layer
        if self.layers is None:
            raise InputError(
                "these engines were built without the text encoder's layer outputs that clip "
                "skip needs; rebuild them with this sdtrt (`sdtrt build`) to use --clip-skip"
            )
        most = self.default_layer if self.default_layer is not None else self.layers
        if not 0 <= clip_skip <= most:
            raise InputError(
                f"clip skip must be 0 to {most} (this text encoder's layers), got {clip_skip}"
            )
        return most - clip_skip

    def tokenize(self, texts: list[str], syntax: PromptSyntax, count: int = 1) -> list[TokenChunk]:
        """Text-encoder inputs for `texts`: one chunk (the diffusers syntax) or at least
        `count` (the A1111 syntax: as many as the longest text needs)."""
        texts = [expand_prompt(text, self.words) for text in texts]
        if syntax == "diffusers":
            return [TokenChunk(self.tokenizer(texts), None)]
        per_text = [self._chunks(text) for text in texts]
        count = max(count, *(len(chunks) for chunks in per_text))
        if count > self.max_chunks:
            longest = texts[max(range(len(texts)), key=lambda i: len(per_text[i]))]
            raise InputError(
                f"the prompt {longest[:40]!r}... needs {count} chunks of "
                f"{self.tokenizer.length - 2} tokens, more than the {self.max_chunks} these "
                f"engines take; shorten it or rebuild with --max-prompt-chunks {count}"
            )
        empty = Chunk([], [])
        return [
            self._framed([c[index] if index < len(c) else empty for c in per_text])
            for index in range(count)
        ]

    def encode(
        self, chunks: list[TokenChunk], syntax: PromptSyntax, clip_skip: int | None, prompts: int
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Text states for tokenized texts whose last `prompts` rows are prompts (the rest
        negative prompts), chunks joined along the sequence; and the pooled output of the
        first chunk where the encoder has one (as diffusers and the A1111 web UI take it)."""
        layer = self.check_clip_skip(clip_skip)
        parts = []
        pooled = None
        feeds = {} if self.added_input is None else {ADDED_EMBEDDINGS: self._added_rows()}
        for chunk in chunks:
            outputs = self.encoder.infer({"input_ids": chunk.ids, **feeds})
            states = self._states(outputs, self.default_layer)
            if layer != self.default_layer:
                skipped = self._states(outputs, layer)
                if syntax == "diffusers":  # diffusers skips layers for the prompts only
                    states = states.copy()
                    states[-prompts:] = skipped[-prompts:]
                else:
                    states = skipped
            if chunk.weights is not None:
                states = apply_weights(states, chunk.weights)
            parts.append(states)
            if pooled is None and self.pooled:
                pooled = outputs[POOLED]
        return (parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)), pooled

    def _states(self, outputs: dict[str, np.ndarray], layer: int | None) -> np.ndarray:
        if layer is None:
            return outputs["last_hidden_state"]
        return outputs[self.layer_output][:, layer]

    def _chunks(self, text: str) -> list[Chunk]:
        fragments = parse_prompt(text)
        tokens = self.tokenizer.tokens([f.text for f in fragments])
        return split_chunks(fragments, tokens, self.tokenizer.length - 2, self.comma_id)

    def _framed(self, chunks: list[Chunk]) -> TokenChunk:
        """Chunks as text-encoder input: start, tokens, end, padding; weight 1 outside tokens."""
        length = self.tokenizer.length
        ids = np.full((len(chunks), length), self.tokenizer.pad_id, dtype=np.int32)
        weights = np.ones((len(chunks), length), dtype=np.float32)
        for row, chunk in enumerate(chunks):
            end = len(chunk.ids) + 1
            ids[row, 0] = self.tokenizer.start_id
            ids[row, 1:end] = chunk.ids
            ids[row, end] = self.tokenizer.end_id
            weights[row, 1:end] = chunk.weights
        return TokenChunk(ids, weights)
