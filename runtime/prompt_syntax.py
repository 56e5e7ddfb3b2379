"""The A1111 web UI's prompt syntax: emphasis, escapes, BREAK, and prompts of any length.

Written from the web UI's documented behaviour (its prompt_parser and CLIP wrapper):

- `(text)` multiplies the weight of its tokens by 1.1, `[text]` divides it by 1.1, `(text:1.3)`
  multiplies it by 1.3; brackets nest, and multiply as they close. A bracket left open at the end
  applies to everything after it; a closing bracket with nothing open is literal text.
  `\\(`, `\\)`, `\\[`, `\\]` and `\\\\` are the literal characters; a lone backslash is dropped.
- `BREAK` (the word, in capitals) ends the current chunk.
- Neighbouring pieces of equal weight are joined before tokenizing, as the web UI does, so
  `(a)(b)` is tokenized as the single word `ab`.
- Tokens fill chunks of 75 (the text encoder's length less its start and end tokens). When a
  chunk is full and a comma lies within its last 20 tokens, what follows the comma moves to the
  next chunk (the web UI's default "comma padding backtrack" of 20).

One departure: the web UI turns a `BREAK` inside brackets into the literal word with a negative
weight; here a `BREAK` always ends the chunk.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from sdtrt.errors import InputError

# "diffusers": prompts as diffusers reads them (plain text, cut to the text encoder's length).
PromptSyntax = Literal["diffusers", "a1111"]
PROMPT_SYNTAXES: tuple[PromptSyntax, ...] = ("diffusers", "a1111")
EMPHASIS = 1.1
COMMA_BACKTRACK = 20  # the web UI's default; 0 would turn the backtrack off

# One lexical piece each: an escape, a bracket, a weight closing a round bracket, plain text, or a
# colon that is not part of a weight.
_PIECE = re.compile(
    r"""
    (?P<escape>\\[()\[\]\\]?)
    | (?P<open>[(\[])
    | (?P<weight>:\s*(?P<value>[+-]?[.\d]+)\s*\))
    | (?P<close>[)\]])
    | (?P<text>[^\\()\[\]:]+|:)
    """,
    re.VERBOSE,
)
_BREAK = re.compile(r"\s*\bBREAK\b\s*")


@dataclass
class Fragment:
    """A piece of prompt text and its weight; a chunk break when `is_break`."""

    text: str
    weight: float = 1.0
    is_break: bool = False


def parse_prompt(prompt: str) -> list[Fragment]:
    """The prompt as weighted text pieces and breaks, in order."""
    pieces: list[Fragment] = []
    rounds: list[int] = []  # where each open bracket's range starts in `pieces`
    squares: list[int] = []

    def multiply(start: int, factor: float) -> None:
        for piece in pieces[start:]:
            if not piece.is_break:
                piece.weight *= factor

    def add_text(text: str) -> None:
        for index, part in enumerate(_BREAK.split(text)):
            if index:
                pieces.append(Fragment("", is_break=True))
            pieces.append(Fragment(part))

    for match in _PIECE.finditer(prompt):
        piece = match.group(0)
        if match.group("escape") is not None:
            pieces.append(Fragment(piece[1:]))
        elif piece == "(":
            rounds.append(len(pieces))
        elif piece == "[":
            squares.append(len(pieces))
        elif match.group("weight") is not None and rounds:
            value = match.group("value")
            try:
                factor = float(value)
            except ValueError as error:
                raise InputError(
                    f"prompt weight '{value}' in '{piece}' is not a number; "
                    "write it like (word:1.2)"
                ) from error
            multiply(rounds.pop(), factor)
        elif piece == ")" and rounds:
            multiply(rounds.pop(), EMPHASIS)
        elif piece == "]" and squares:
            multiply(squares.pop(), 1 / EMPHASIS)
        else:
            add_text(piece)
    for start in rounds:
        multiply(start, EMPHASIS)
    for start in squares:
        multiply(start, 1 / EMPHASIS)
    return _join_equal_weights(pieces) or [Fragment("")]


def is_plain(prompt: str) -> bool:
    """Whether `prompt` reads the same in both syntaxes: no weights, escapes or BREAK."""
    return parse_prompt(prompt) == [Fragment(prompt)]


def _join_equal_weights(pieces: list[Fragment]) -> list[Fragment]:
    joined: list[Fragment] = []
    for piece in pieces:
        last = joined[-1] if joined else None
        if (
            last is not None
            and not last.is_break
            and not piece.is_break
            and last.weight == piece.weight
        ):
            last.text += piece.text
        else:
            joined.append(Fragment(piece.text, piece.weight, piece.is_break))
    return joined


@dataclass
class Chunk:
    """Up to a chunk's worth of token ids (no start, end or padding) and their weights."""

    ids: list[int]
    weights: list[float]


def split_chunks(
    fragments: list[Fragment],
    fragment_tokens: list[list[int]],
    chunk_tokens: int,
    comma_id: int | None,
) -> list[Chunk]:
    """Token ids of each fragment (`fragment_tokens`, in order) laid into chunks."""
    chunks: list[Chunk] = []
    current = Chunk([], [])
    last_comma = -1

    def close() -> None:
        nonlocal current, last_comma
        chunks.append(current)
        current = Chunk([], [])
        last_comma = -1

    for fragment, ids in zip(fragments, fragment_tokens, strict=True):
        if fragment.is_break:
            close()
            continue
        for token in ids:
            if comma_id is not None and token == comma_id:
                last_comma = len(current.ids)
            elif (
                COMMA_BACKTRACK
                and len(current.ids) == chunk_tokens
                and last_comma != -1
                and len(current.ids) - last_comma <= COMMA_BACKTRACK
            ):
                cut = last_comma + 1
                moved = Chunk(current.ids[cut:], current.weights[cut:])
                del current.ids[cut:], current.weights[cut:]
                close()
                current = moved
            if len(current.ids) == chunk_tokens:
                close()
            current.ids.append(token)
            current.weights.append(fragment.weight)
    if current.ids or not chunks:
        close()
    return chunks
