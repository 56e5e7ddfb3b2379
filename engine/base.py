"""The Engine interface every backend implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from types import TracebackType

import numpy as np

from sdtrt.engine.tensors import ComponentIO, TensorSpec, check_feeds


class Engine(ABC):
    """One built network. `infer` checks its feeds against `io` and returns fresh arrays.

    Outputs never alias buffers the engine reuses, so callers may keep them across calls.

    Engines are safe to call from several threads at once, and such calls run side by side: a
    server shares one loaded engine among its workers rather than loading one per worker. A GPU
    engine gives each call in flight its own execution state (TensorRT: an execution context,
    a stream, I/O buffers and activation scratch), made when every existing one is busy and
    kept for later calls, so its memory grows with the most calls ever run at once. A GPU
    engine may keep an input on the device between calls when it is passed again as the very
    same read-only array; make an array read-only (`array.setflags(write=False)`) only when its
    contents will not change.

    `close()` frees the engine's memory; call it once no call is running. Closing again does
    nothing, and an engine that is never closed frees its memory when garbage-collected.
    """

    def __init__(self, name: str, io: ComponentIO) -> None:
        self.name = name
        self.io = io

    @property
    def inputs(self) -> tuple[TensorSpec, ...]:
        return self.io.inputs

    @property
    def outputs(self) -> tuple[TensorSpec, ...]:
        return self.io.outputs

    def infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        check_feeds(self.name, self.io, feeds)
        return self._run(feeds)

    @abstractmethod
    def _run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the network on feeds already checked against `io`."""

    @abstractmethod
    def close(self) -> None:
        """Release the backend's resources; the engine is unusable afterwards."""

    def __enter__(self) -> Engine:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
