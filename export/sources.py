"""Where a model comes from: a local diffusers folder, a built-in preset, or a Hugging Face hub id.

Every kind ends as a local diffusers folder, so the build has one path to follow.
"""

from __future__ import annotations

import hashlib
import json
import re
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

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


@dataclass(frozen=True)
class PartFolder:
    """A model part built beside a model (a tiny VAE, a ControlNet): its local folder, the
    name it goes by (its folder's, preset's, or hub id's last part) and its config."""

    path: Path
    name: str
    config: dict[str, Any]


@contextmanager
def open_part(
    ref: str,
    *,
    kind: str,
    class_name: str,
    described: str,
    presets: Mapping[str, Callable[[Path], None]],
    patterns: list[str],
) -> Iterator[PartFolder]:
    """`ref` as a local folder of a diffusers `class_name` in safetensors: an existing folder,
    a preset (`presets` writes it, for the block) or a hub id (downloaded). `kind` and
    `described` (the part, and its class, as users know them) word the one-line refusals."""
    path = Path(ref).expanduser()
    if path.exists():
        yield _part(path.resolve(), path.resolve().name, class_name, described)
    elif ref in presets:
        with tempfile.TemporaryDirectory(prefix=f"sdtrt-{ref}-") as scratch:
            folder = Path(scratch) / ref
            presets[ref](folder)
            yield _part(folder, ref, class_name, described)
    elif HUB_ID.fullmatch(ref):
        folder = download(ref, patterns, f"a local {class_name} folder")
        yield _part(folder, ref.rsplit("/", 1)[1], class_name, described)
    else:
        raise ModelSourceError(
            f"unknown {kind} '{ref}': not an existing folder, not a preset "
            f"({', '.join(presets)}) and not a hub id (org/name)"
        )


def _part(folder: Path, name: str, class_name: str, described: str) -> PartFolder:
    """`folder`, once seen to hold `class_name` in safetensors (a pickle can run code as it
    loads: not read)."""
    path = folder / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
        found = config.get("_class_name")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError) as error:
        raise ModelSourceError(
            f"{folder} is not a diffusers {class_name} folder ({path.name} cannot be read)"
        ) from error
    if found != class_name:
        raise ModelSourceError(f"{folder} holds {found}, not {described}")
    if not any(folder.glob("*.safetensors")):
        raise ModelSourceError(
            f"{folder} has no .safetensors weights; convert its weights to safetensors"
        )
    return PartFolder(folder, name, config)


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
