"""What the torch libraries print that says nothing to sdtrt's users."""

from __future__ import annotations


def quiet_torch_libraries() -> None:
    """diffusers and transformers print progress bars and hints that say nothing to our users."""
    import diffusers
    import transformers

    for library in (diffusers, transformers):
        library.utils.logging.set_verbosity_error()
        library.utils.logging.disable_progress_bar()
