"""What the service refuses or stops: one-line `SdtrtError`s the HTTP layer maps to statuses."""

from __future__ import annotations

from sdtrt.errors import InputError, SdtrtError


class QueueFull(SdtrtError):
    """Every queue slot is taken; the client should retry after `retry_after` seconds."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class NotAccepting(SdtrtError):
    """The service is still warming up, or draining before it stops."""

    def __init__(self, message: str, retry_after: int = 5) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class UnknownJob(InputError):
    """No job has this id (never had, or it left the bounded history)."""


class JobCancelled(SdtrtError):
    """Raised between denoising steps to stop a job that was cancelled."""


class DeadlineExceeded(SdtrtError):
    """Raised between denoising steps to stop a job past its deadline."""
