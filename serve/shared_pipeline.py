"""The one pipeline a service's workers share: one copy of the engines however many workers run.

Engines take calls from several threads at once (engine/base.py: a GPU engine gives each call
in flight its own execution state, and shares the weights), and a `Pipeline` keeps each call's
state in the call. What workers must not do at once is change the pipeline: a job whose LoRAs
differ from the pipeline's takes it alone (it waits for the running jobs to finish, and jobs
that arrive meanwhile wait for it, so a switch is not starved), and replacing a pipeline a
device error may have broken waits until nobody uses it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from sdtrt.engine.weights.lora import LoraSource
from sdtrt.errors import SdtrtError
from sdtrt.runtime.pipeline import Pipeline

log = logging.getLogger(__name__)


class PipelineLost(SdtrtError):
    """The pipeline could not be loaded (again): no job can run on this service."""


class SharedPipeline:
    def __init__(self, load: Callable[[], Pipeline]) -> None:
        """`load` loads (and warms) a pipeline, at start and after a device error."""
        self._load = load
        self._changed = threading.Condition()
        self._pipe: Pipeline | None = None
        self._generation = 0  # pipelines loaded so far; a lease names the one it ran on
        self._loading = False
        self._failure: str | None = None
        self._users = 0
        self._alone = False  # a job that switches LoRAs runs by itself
        self._waiting_alone = 0  # jobs waiting to: later jobs queue behind them

    def ensure(self) -> bool:
        """Load the pipeline if nobody has; True for the caller that loaded it. Raises
        PipelineLost where it cannot be loaded, to every caller."""
        with self._changed:
            while self._loading:
                self._changed.wait()
            self._check_locked()
            if self._pipe is not None:
                return False
            self._loading = True
        self._install(self._load_or_fail())
        return True

    @contextmanager
    def lease(self, loras: tuple[LoraSource, ...]) -> Iterator[tuple[Pipeline, int]]:
        """The pipeline, and its generation, for one job with `loras`: shared with the jobs
        that want the same LoRAs, alone for one that will switch them."""
        with self._changed:
            waiting = alone = False
            try:
                while True:
                    self._check_locked()
                    pipe = self._pipe
                    if pipe is not None and not self._loading and not self._alone:
                        # Where others wait to switch, only one that has become one's own
                        # set (after a switch) goes first.
                        if pipe.loras == loras and self._waiting_alone == int(waiting):
                            break
                        if pipe.loras != loras and self._users == 0:
                            alone = self._alone = True
                            break
                    if pipe is not None and pipe.loras != loras and not waiting:
                        waiting = True
                        self._waiting_alone += 1
                    self._changed.wait()
            finally:
                if waiting:
                    self._waiting_alone -= 1
            self._users += 1
            generation = self._generation
        try:
            yield pipe, generation
        finally:
            with self._changed:
                self._users -= 1
                if alone:
                    self._alone = False
                self._changed.notify_all()

    def replace(self, generation: int) -> bool:
        """Load the pipeline again after a job on `generation` failed in a way that may have
        broken it (a device error); True for the caller that did. The old one is closed once
        its running jobs end. Raises PipelineLost where it cannot be loaded again."""
        with self._changed:
            if generation != self._generation or self._loading or self._failure:
                return False  # another worker is at it, or has done it
            self._loading = True
            while self._users:
                self._changed.wait()
            old, self._pipe = self._pipe, None
        if old is not None:
            old.close()
        self._install(self._load_or_fail())
        return True

    def close(self) -> None:
        with self._changed:
            pipe, self._pipe = self._pipe, None
        if pipe is not None:
            pipe.close()

    def _load_or_fail(self) -> Pipeline:
        try:
            return self._load()
        except Exception as error:
            message = str(error) if isinstance(error, SdtrtError) else repr(error)
            with self._changed:
                self._failure = message
                self._loading = False
                self._changed.notify_all()
            raise PipelineLost(message) from error

    def _install(self, pipe: Pipeline) -> None:
        with self._changed:
            self._pipe = pipe
            self._generation += 1
            self._loading = False
            self._changed.notify_all()

    def _check_locked(self) -> None:
        if self._failure is not None:
            raise PipelineLost(self._failure)
