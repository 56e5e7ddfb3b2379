"""TensorRT's messages through Python logging, so `-v` shows them and its errors are not lost."""

from __future__ import annotations

import logging
import threading
from typing import Any

log = logging.getLogger("sdtrt.engine.tensorrt")

_LOGGER: list[Any] = []  # TensorRT wants one logger per process, alive as long as TensorRT is
_MAKE = threading.Lock()


def trt_logger() -> Any:
    """The process's TensorRT logger (made on first use; TensorRT must be importable)."""
    with _MAKE:
        if _LOGGER:
            return _LOGGER[0]
        import tensorrt as trt

        severities = {
            trt.ILogger.Severity.INTERNAL_ERROR: logging.ERROR,
            trt.ILogger.Severity.ERROR: logging.ERROR,
            trt.ILogger.Severity.WARNING: logging.INFO,  # much that TensorRT warns about is fine
        }

        class Logger(trt.ILogger):
            def __init__(self) -> None:
                trt.ILogger.__init__(self)

            def log(self, severity: trt.ILogger.Severity, msg: str) -> None:
                log.log(severities.get(severity, logging.DEBUG), "TensorRT: %s", msg)

        _LOGGER.append(Logger())
        return _LOGGER[0]
