"""The errors sdtrt raises: each message is one line a user can act on; the CLI prints them."""


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
