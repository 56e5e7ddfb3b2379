"""Several models in one server: an engine directory per model, each behind its own Service.

The first directory's model is the default and starts with the server; the others start when a
request first names them (`/v1`'s and OpenAI's `model`, A1111's `sd_model_checkpoint`). Engines
are held within a memory budget (their files' size: a model's workers share one copy): before
a model starts, the least recently used idle ones are stopped until it fits.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from sdtrt.engine.manifest import Manifest, read_manifest
from sdtrt.errors import InputError
from sdtrt.serve.errors import NotAccepting, UnknownJob
from sdtrt.serve.jobs import Job
from sdtrt.serve.service import Service

GIB = 2**30


@dataclass
class _Model:
    directory: Path
    manifest: Manifest
    bytes: int  # what its workers hold: the engines' files, one copy they share
    service: Service | None = None
    last_used: float = field(default_factory=time.monotonic)


def _engine_bytes(manifest: Manifest) -> int:
    return sum(size for record in manifest.components.values() for size in record.files.values())


class ModelSet:
    def __init__(
        self,
        directories: Sequence[Path],
        make_service: Callable[[Path], Service],
        budget_bytes: int | None = None,
    ) -> None:
        self._make = make_service
        self._lock = threading.Lock()
        self.models: dict[str, _Model] = {}
        for directory in directories:
            manifest = read_manifest(directory)
            name = manifest.model.name
            if name in self.models:  # two builds of one model: told apart by their folders
                name = directory.name
            if name in self.models:
                raise InputError(f"two engine directories are both called {name!r}; rename one")
            self.models[name] = _Model(directory, manifest, _engine_bytes(manifest))
        self.default = next(iter(self.models))
        self.budget_bytes = budget_bytes
        self._lazy: set[str] = set()

    @classmethod
    def of(cls, service: Service) -> ModelSet:
        """A set of the one service given (started and stopped with the app)."""
        models = cls([service.directory], lambda _: service)
        models.models[models.default].service = service
        return models

    @property
    def names(self) -> list[str]:
        return list(self.models)

    def name_of(self, asked: str | None) -> str:
        """The model a request names (its name, its folder's, or None for the default)."""
        if asked is None:
            return self.default
        for name, model in self.models.items():
            if asked in (name, model.directory.name):
                return name
        raise InputError(f"unknown model {asked!r}; this server has: {', '.join(self.models)}")

    def get(self, asked: str | None = None) -> Service:
        """The model's service, started (and others stopped to make room) if it is not yet."""
        name = self.name_of(asked)
        with self._lock:
            model = self.models[name]
            model.last_used = time.monotonic()
            if model.service is None:
                self._make_room(model)
                model.service = self._make(model.directory)
                if name != self.default:
                    self._lazy.add(name)
            if model.service.state == "created":
                model.service.start()
            return model.service

    def check_default(self) -> None:
        """Make the default model's service (its settings checked) without starting it."""
        model = self.models[self.default]
        if model.service is None:
            model.service = self._make(model.directory)

    def loading_on_demand(self, service: Service) -> bool:
        """Whether a request should wait for this service to warm up (a model it started),
        rather than be answered 503 (the server's own start)."""
        return service.state == "starting" and any(
            self.models[name].service is service for name in self._lazy
        )

    def started(self) -> list[Service]:
        with self._lock:
            return [m.service for m in self.models.values() if m.service is not None]

    def manifest(self, asked: str | None = None) -> Manifest:
        return self.models[self.name_of(asked)].manifest

    def find_job(self, job_id: str, owner: str | None) -> tuple[Service, Job]:
        """The job of that id, in whichever model's service holds it."""
        for service in self.started():
            try:
                return service, service.get(job_id, owner)
            except UnknownJob:
                continue
        raise UnknownJob(f"no job with id {job_id!r}")

    def start(self) -> None:
        self.get(None)

    def shutdown(self, timeout: float) -> None:
        for service in self.started():
            service.shutdown(timeout)

    def _make_room(self, model: _Model) -> None:
        """Stop the least recently used idle models until `model` fits the budget."""
        if self.budget_bytes is None:
            return
        running = [m for m in self.models.values() if m.service is not None]
        default = self.models[self.default]
        held = sum(m.bytes for m in running)
        for other in sorted(running, key=lambda m: m.last_used):
            if held + model.bytes <= self.budget_bytes:
                return
            service = other.service
            assert service is not None
            if other is default or service.queue_depth or service.running:
                continue  # the default model stays: the server's readiness is its
            service.shutdown(5.0)
            other.service = None
            held -= other.bytes
        if held + model.bytes > self.budget_bytes and running:
            raise NotAccepting(
                f"the models in use hold {held / GIB:.1f} GiB of the {self.budget_bytes / GIB:.1f}"
                f" GiB budget and are busy; retry once they are idle",
                retry_after=10,
            )
