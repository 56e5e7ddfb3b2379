"""The errors sdtrt raises: each message is one line a user can act on; the CLI prints them.

Each keeps what caused it (`raise ... from error`); with SDTRT_DEBUG=1 in the environment (the
CLI's `--debug` sets it), whoever turns an error into its one line shows the full traceback too.
"""

import os

DEBUG_ENV = "SDTRT_DEBUG"


def debugging() -> bool:
    """Whether tracebacks are asked for behind the one-line errors."""
    return os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")


def first_line(error: BaseException, limit: int = 200) -> str:
    """What a library's exception says, for one of our one-line messages: its first non-empty
    line (its type's name when it says nothing); past `limit` characters the middle is cut, so
    that both what failed (at the start) and why (often at the end) stay."""
    lines = [line for line in str(error).strip().splitlines() if line.strip()]
    line = lines[0].strip() if lines else type(error).__name__
    if len(line) <= limit:
        return line
    half = (limit - 5) // 2
    return f"{line[:half]} ... {line[-half:]}"


class SdtrtError(Exception):
    """Base class: something the user can fix, described in one line."""


class InputError(SdtrtError):
    """A request argument is invalid (size, steps, guidance, scheduler name, ...)."""


class ModelSourceError(SdtrtError):
    """The model to build could not be found, recognised or loaded."""


class ArtifactError(SdtrtError):
    """An engine directory is missing, invalid, from a newer sdtrt, or damaged."""


class EngineIncompatible(ArtifactError):
    """An engine was built for another backend version or device and must be rebuilt."""


class BuildError(SdtrtError):
    """An export or engine build failed, or a built component missed its parity tolerance."""


class BackendUnavailable(SdtrtError):
    """The requested backend's library is not installed or cannot run here."""


class NumericalError(SdtrtError):
    """A network produced NaN or infinity (an fp16 overflow, most often): no image is written."""
