"""Textual-inversion embeddings: new prompt words whose token embeddings come from a file, as
diffusers' `load_textual_inversion` loads them, without a rebuild.

Read from .safetensors: diffusers' own files (one tensor named after its token), the A1111 web
UI's (`emb_params`; SDXL's `clip_l` and `clip_g`, one per text encoder); and, only when the user
allows pickles (which can run code as they load), the `.pt` and `.bin` files `torch.save` wrote
in those layouts (A1111's `string_to_param`), read without torch (runtime/torch_pickle.py).
An embedding of n vectors becomes the tokens `word`, `word_1`, ..., `word_{n-1}`, and a
prompt's `word` is written out as all of them, as diffusers does. Each CLIP text encoder engine
takes the vectors as rows after its own table (ADDED_EMBEDDINGS); the tokenizer gives the new
tokens the ids that follow its vocabulary, which is the table's size.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sdtrt.engine.weights.safetensors import SafetensorsFile
from sdtrt.errors import InputError
from sdtrt.runtime.torch_pickle import load_torch_file, parameters

log = logging.getLogger(__name__)

PICKLED = (".pt", ".bin")
# The A1111 web UI's keys: SD 1.x/2.x's one table, SDXL's per text encoder (by their widths).
A1111_KEY = "emb_params"
SDXL_KEYS = ("clip_l", "clip_g")


@dataclass(frozen=True)
class Embedding:
    """A file's word and its vectors, (n, width) per table in the file."""

    token: str
    vectors: tuple[np.ndarray, ...]

    def tokens(self) -> list[str]:
        """The tokens of its n vectors, as diffusers names them."""
        count = len(self.vectors[0])
        return [self.token, *(f"{self.token}_{i}" for i in range(1, count))]


def read_embedding(
    path: str | Path, token: str | None = None, allow_pickle: bool = False
) -> Embedding:
    """The embedding in `path`; its word is `token`, else the file's own (diffusers' files name
    theirs; the web UI's take the file's name, as the web UI does). `.pt` and `.bin` files
    (pickles) are read only with `allow_pickle`."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise InputError(f"embedding file {path} does not exist")
    suffix = path.suffix.lower()
    if suffix in PICKLED and not allow_pickle:
        raise InputError(
            f"embedding file {path} is a pickle, which can run code as it loads; convert it to "
            ".safetensors, or pass --allow-pickle if you trust its source"
        )
    if suffix not in (".safetensors", *PICKLED):
        raise InputError(f"embedding file {path} is not .safetensors (nor .pt or .bin)")
    try:
        keys, read = _tensors(path)
        if A1111_KEY in keys:
            word, tables = path.stem, [read(A1111_KEY)]
        elif all(key in keys for key in SDXL_KEYS):
            word, tables = path.stem, [read(key) for key in SDXL_KEYS]
        elif len(keys) == 1:
            word, tables = keys[0], [read(keys[0])]
        else:
            raise InputError(
                f"{path.name} is not a textual-inversion embedding sdtrt reads: expected one "
                f"tensor, {A1111_KEY}, or {' and '.join(SDXL_KEYS)}; it holds {', '.join(keys)}"
            )
    except (OSError, ValueError) as error:
        raise InputError(f"embedding file {path} cannot be read ({error})") from error
    vectors = tuple(np.atleast_2d(np.asarray(t, dtype=np.float32)) for t in tables)
    if any(v.ndim != 2 or not np.all(np.isfinite(v)) for v in vectors):
        raise InputError(f"{path.name} holds no finite (n, width) embedding vectors")
    if len({len(v) for v in vectors}) != 1 or not len(vectors[0]):
        raise InputError(f"{path.name}: its tables hold no vectors, or different numbers of them")
    word = token or word
    if not word or any(c.isspace() for c in word):
        raise InputError(f"an embedding's word must be one word without spaces, got {word!r}")
    return Embedding(word, vectors)


def _tensors(path: Path) -> tuple[list[str], Callable[[str], np.ndarray]]:
    """A file's tensor names and a reader of them. A pickled A1111 embedding (`string_to_param`,
    one tensor under "*") is read as its .safetensors form (`emb_params`)."""
    if path.suffix.lower() == ".safetensors":
        file = SafetensorsFile(path)
        return file.keys(), file.read
    data = load_torch_file(path)
    if isinstance(data, dict) and "string_to_param" in data:
        data = {A1111_KEY: next(iter(parameters(data["string_to_param"]).values()), None)}
    tensors = {
        str(name): value
        for name, value in parameters(data).items()
        if isinstance(value, np.ndarray)
    }
    return list(tensors), tensors.__getitem__


def vectors_for(embedding: Embedding, widths: list[int], name: str) -> list[np.ndarray]:
    """The embedding's vectors for text encoders of `widths` (in the model's order): one table
    per encoder, matched by width (SDXL's `clip_l` to the first, `clip_g` to the second)."""
    by_width = {int(v.shape[1]): v for v in embedding.vectors}
    missing = [width for width in widths if width not in by_width]
    if missing or len(embedding.vectors) != len(widths):
        have = ", ".join(str(int(v.shape[1])) for v in embedding.vectors)
        want = ", ".join(str(width) for width in widths)
        raise InputError(
            f"{name} holds vectors of width {have}; this model's text encoders take {want}: "
            "use an embedding made for this model's family"
        )
    return [by_width[width] for width in widths]


def expand_prompt(prompt: str, words: dict[str, str]) -> str:
    """`prompt` with each multi-vector word written out as its tokens (diffusers'
    `maybe_convert_prompt`), the longest word first where one word holds another, as the
    tokenizer matches its added tokens."""
    if not words:
        return prompt
    pattern = "|".join(re.escape(word) for word in sorted(words, key=len, reverse=True))
    return re.sub(pattern, lambda found: words[found.group(0)], prompt)


def load_folder(
    folder: str | Path, load: Callable[..., None], allow_pickle: bool = False
) -> list[str]:
    """`load(path, allow_pickle=...)` (`Pipeline.load_textual_inversion`) each embedding file in
    `folder` and below, in name order, as the web UI loads its embeddings folder: those the
    model cannot take (another family's, a word it has) are skipped with a warning, as are
    pickles unless `allow_pickle`. The files loaded."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise InputError(f"the embeddings folder {folder} is not a folder")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".safetensors", *PICKLED))
    pickles = [path for path in files if path.suffix.lower() in PICKLED]
    if pickles and not allow_pickle:
        log.warning(
            "%d embeddings skipped (%s...): .pt and .bin files are pickles, read only with "
            "--allow-pickle",
            len(pickles),
            pickles[0].name,
        )
        files = [path for path in files if path not in pickles]
    loaded = []
    for path in files:
        try:
            load(path, allow_pickle=allow_pickle)
        except InputError as error:
            log.warning("embedding %s skipped: %s", path.name, error)
        else:
            loaded.append(path.name)
    return loaded
