"""Where a model comes from: a local diffusers folder, a built-in preset, or a Hugging Face hub id.

Every kind ends as a local diffusers folder, so the build has one path to follow.
"""

from __future__ import annotations

import hashlib
import re
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from sdtrt.errors import ModelSourceError
from sdtrt.export.presets import PRESETS, write_preset
from sdtrt.export.single_file import PICKLE, SAFETENSORS, convert_single_file, is_single_file

HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
# What a Stable Diffusion build reads from a hub repository (SDXL's second text encoder too);
# other weights (fp16 variants, .bin duplicates, safety checker) are left on the hub.
HUB_PATTERNS = [
    "model_index.json",
    "scheduler/*.json",
    "tokenizer/*",
    "tokenizer_2/*",
    "text_encoder/*.json",
    "text_encoder/model.safetensors",
    "text_encoder_2/*.json",
    "text_encoder_2/model.safetensors",
    "unet/*.json",
    "unet/diffusion_pytorch_model.safetensors",
    "vae/*.json",
    "vae/diffusion_pytorch_model.safetensors",
]


@dataclass(frozen=True)
class ModelFolder:
    path: Path
    kind: Literal["folder", "preset", "hub", "file"]
    ref: str
    name: str


def describe_model_ref(ref: str) -> Literal["folder", "preset", "hub", "file"]:
    """Decide what `ref` names, in order: an existing folder or single-file checkpoint, a
    preset, a hub id."""
    path = Path(ref).expanduser()
    if is_single_file(path):
        return "file"
    if path.exists():
        if not (path.is_dir() and (path / "model_index.json").is_file()):
            raise ModelSourceError(f"{path} is not a diffusers model folder (no model_index.json)")
        return "folder"
    if ref in PRESETS:
        return "preset"
    if HUB_ID.fullmatch(ref):
        return "hub"
    raise ModelSourceError(
        f"unknown model '{ref}': not an existing folder, not a preset "
        f"({', '.join(PRESETS)}) and not a hub id (org/name)"
    )


def download(
    hub_id: str, patterns: list[str] = HUB_PATTERNS, local: str = "a local diffusers folder"
) -> Path:
    """The files of `hub_id` that match `patterns`, fetched (or from the cache); `local` names
    what to pass instead when that fails."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(hub_id, allow_patterns=patterns))
    except Exception as error:  # offline, missing repo, gated repo: all end the same way
        reason = type(error).__name__
        raise ModelSourceError(
            f"cannot fetch '{hub_id}' from the Hugging Face Hub ({reason}); "
            f"check the id and your connection, or pass {local}"
        ) from error


@contextmanager
def open_source(ref: str, allow_pickle: bool = False) -> Iterator[ModelFolder]:
    """Yield `ref` as a local diffusers folder; a preset's folder, or a single file's
    converted one, lives only inside the block."""
    kind = describe_model_ref(ref)
    if kind == "file":
        path = Path(ref).expanduser().resolve()
        with tempfile.TemporaryDirectory(prefix="sdtrt-file-") as scratch:
            folder = Path(scratch) / path.stem
            convert_single_file(path, folder, allow_pickle)
            yield ModelFolder(path=folder, kind=kind, ref=str(path), name=path.stem)
    elif kind == "folder":
        path = Path(ref).expanduser().resolve()
        check_no_pickles(path, allow_pickle)
        yield ModelFolder(path=path, kind=kind, ref=str(path), name=path.name)
    elif kind == "preset":
        with tempfile.TemporaryDirectory(prefix=f"sdtrt-{ref}-") as scratch:
            folder = Path(scratch) / ref
            write_preset(ref, folder)
            yield ModelFolder(path=folder, kind=kind, ref=ref, name=ref)
    else:
        yield ModelFolder(path=download(ref), kind=kind, ref=ref, name=ref)


def check_no_pickles(folder: Path, allow_pickle: bool) -> None:
    """Refuse a folder with a network only in pickle files (`.bin`, `.pt`): loading one can run
    any code it holds. Where a folder also has `.safetensors`, those are what is loaded."""
    if allow_pickle:
        return
    for part in sorted(p for p in folder.iterdir() if p.is_dir()):
        suffixes = {f.suffix.lower() for f in part.iterdir() if f.is_file()}
        if suffixes & set(PICKLE) and not suffixes & set(SAFETENSORS):
            raise ModelSourceError(
                f"{part} holds its weights only as a pickle, which can run arbitrary code when "
                "loaded; convert it to .safetensors, or pass --allow-pickle if you trust its "
                "source"
            )


def digest_files(root: Path, subfolders: Iterable[str]) -> str:
    """sha256 over the names and contents of every file under `root`/subfolder, in a fixed order."""
    digest = hashlib.sha256()
    for subfolder in sorted(set(subfolders)):
        base = root / subfolder
        files = [base] if base.is_file() else sorted(p for p in base.rglob("*") if p.is_file())
        for path in files:
            digest.update(str(path.relative_to(root)).encode() + b"\0")
            with open(path, "rb") as handle:
                while chunk := handle.read(1 << 20):
                    digest.update(chunk)
    return digest.hexdigest()
