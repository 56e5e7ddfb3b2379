"""Writing an engine directory atomically, and reusing what an earlier build already made.

A build happens in a hidden sibling (`.NAME.partial`) that only becomes NAME once its manifest is
written, so an interrupted or failed build never leaves a directory that the runtime accepts. The
sibling survives an interruption: each finished component leaves a `component.json` in it, and
the next build reuses every component whose build key still matches, as it does for the
components of a previous complete build.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
from pathlib import Path
from types import TracebackType
from typing import Any

from pydantic import ValidationError

from sdtrt.engine.layout import MANIFEST_NAME, RECORD_NAME
from sdtrt.engine.manifest import ComponentRecord, Manifest, read_manifest
from sdtrt.errors import ArtifactError, BuildError

log = logging.getLogger(__name__)


def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json(path: Path, data: Any) -> None:
    """Write JSON through a temporary file and rename, so a reader never sees half of it."""
    temporary = path.with_name(path.name + ".tmp")
    with open(temporary, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=2)
        handle.write("\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def _is_replaceable(output: Path) -> bool:
    """True when `output` may be replaced: absent, empty, or an sdtrt engine directory."""
    if not output.exists():
        return True
    if not output.is_dir():
        return False
    if not any(output.iterdir()):
        return True
    try:
        data = json.loads((output / MANIFEST_NAME).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(data, dict) and "sdtrt_version" in data


def _files_intact(root: Path, record: ComponentRecord) -> bool:
    return all(
        (root / rel).is_file() and (root / rel).stat().st_size == size
        for rel, size in record.files.items()
    )


def _remove_all_but(folder: Path, kept: list[Path]) -> None:
    """Remove what `folder` holds besides the `kept` folders (relative to it, and whatever
    they hold): networks a build no longer has, and leftovers of interrupted ones."""
    here = {path.parts[0] for path in kept if path.parts}
    for entry in folder.iterdir():
        if entry.name not in here:
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
        elif Path(entry.name) not in kept:  # a group of networks (controlnet/): look inside
            inside = [Path(*path.parts[1:]) for path in kept if path.parts[0] == entry.name]
            _remove_all_but(entry, inside)


def _link_or_copy(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


class ArtifactWriter:
    """Context manager that stages an engine directory and swaps it into place on `commit`."""

    def __init__(self, output: Path) -> None:
        self.output = output
        self.staging = output.parent / f".{output.name}.partial"
        self._previous: Manifest | None = None
        self._lock_fd: int | None = None

    def __enter__(self) -> ArtifactWriter:
        if not _is_replaceable(self.output):
            raise BuildError(
                f"{self.output} exists and is not an sdtrt engine directory; "
                "choose another --output or remove it"
            )
        self.output.parent.mkdir(parents=True, exist_ok=True)
        self.staging.mkdir(exist_ok=True)
        self._lock_fd = os.open(self.staging, os.O_RDONLY)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as error:
            os.close(self._lock_fd)
            self._lock_fd = None
            raise BuildError(
                f"another sdtrt build is writing {self.output}; wait for it"
            ) from error
        if (self.output / MANIFEST_NAME).is_file():
            try:
                self._previous = read_manifest(self.output)
            except ArtifactError as error:
                log.info("not reusing %s: %s", self.output, error)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._lock_fd is None:
            return
        if exc_type is not None and self.staging.exists():
            finished = sorted(p.parent.name for p in self.staging.glob(f"*/{RECORD_NAME}"))
            if finished:
                log.warning(
                    "kept the finished %s in %s; the next build reuses them",
                    ", ".join(finished),
                    self.staging,
                )
            else:
                shutil.rmtree(self.staging, ignore_errors=True)
        os.close(self._lock_fd)
        self._lock_fd = None

    def component_dir(self, name: str) -> Path:
        """A fresh, empty directory for a component about to be built."""
        path = self.staging / name
        if path.exists():
            shutil.rmtree(path)
        path.mkdir(parents=True)  # grouped networks sit a folder deeper (controlnet/<name>)
        return path

    def reuse(self, name: str, build_key: str) -> ComponentRecord | None:
        """The record of a built `name` with this key, its files now in staging; else None."""
        staged = self._staged_record(name)
        if staged and staged.build_key == build_key and _files_intact(self.staging, staged):
            return staged
        previous = self._previous.components.get(name) if self._previous else None
        if previous and previous.build_key == build_key and _files_intact(self.output, previous):
            target = self.component_dir(name)
            for relative in previous.files:
                _link_or_copy(self.output / relative, self.staging / relative)
            write_json(target / RECORD_NAME, previous.model_dump(mode="json"))
            return previous
        return None

    def _staged_record(self, name: str) -> ComponentRecord | None:
        path = self.staging / name / RECORD_NAME
        if not path.is_file():
            return None
        try:
            return ComponentRecord.model_validate_json(path.read_text(encoding="utf-8"))
        except (OSError, ValidationError):
            return None

    def finish_component(self, record: ComponentRecord) -> None:
        """Mark a component complete: its files are durable and a later build may reuse them."""
        for relative in record.files:
            fsync_path(self.staging / relative)
        write_json(self.staging / record.name / RECORD_NAME, record.model_dump(mode="json"))

    def commit(self, manifest: Manifest) -> None:
        """Write the manifest last, then swap the staged directory into place."""
        files = (*manifest.text_encoders.values(), manifest.scheduler_config)
        _remove_all_but(
            self.staging,
            [*(Path(name) for name in manifest.components), *(Path(f).parent for f in files)],
        )
        for relative in files:
            fsync_path(self.staging / relative)
        write_json(self.staging / MANIFEST_NAME, manifest.model_dump(mode="json"))
        fsync_path(self.staging)
        retired = self.output.parent / f".{self.output.name}.old"
        if retired.exists():
            shutil.rmtree(retired)
        if self.output.exists():
            os.rename(self.output, retired)
        os.rename(self.staging, self.output)
        fsync_path(self.output.parent)
        if retired.exists():
            shutil.rmtree(retired)
