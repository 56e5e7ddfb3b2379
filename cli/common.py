"""What every command shares: the app, its consoles, and errors turned into one line."""

from __future__ import annotations

import logging
import os
import sys
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from sdtrt import __version__
from sdtrt.errors import DEBUG_ENV, InputError, SdtrtError, debugging

app = typer.Typer(
    help="Stable Diffusion as an optimized inference engine: build engines, then run them.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)
out = Console()


class _LevelPrefix(logging.Formatter):
    """'warning: message', one line, the way the error lines read."""

    def format(self, record: logging.LogRecord) -> str:
        return f"{record.levelname.lower()}: {record.getMessage()}"


def _version(value: bool) -> None:
    if value:
        out.print(f"sdtrt {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Log what each stage does.")
    ] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
    debug: Annotated[
        bool,
        typer.Option(
            "--debug", help=f"Show the full traceback behind an error (as {DEBUG_ENV}=1 does)."
        ),
    ] = False,
) -> None:
    if debug:  # in the environment, so that the server's workers and child processes see it
        os.environ[DEBUG_ENV] = "1"
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_LevelPrefix())
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING, handlers=[handler], force=True
    )


@contextmanager
def user_errors() -> Iterator[None]:
    """Every failure the user can fix becomes one line on stderr and exit status 1."""
    try:
        yield
    except SdtrtError as error:
        if debugging():
            traceback.print_exception(error, file=sys.stderr)
        console.print(f"[bold red]error:[/] {escape(str(error))}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        console.print("[bold red]interrupted[/]")
        raise typer.Exit(130) from None


def parse_size(text: str | None, option: str) -> tuple[int, int] | None:
    """'512' or '512x768' (height x width) to a (height, width) pair."""
    if text is None:
        return None
    parts = text.lower().split("x")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        values = []
    if len(values) not in (1, 2) or any(v <= 0 for v in values):
        raise InputError(f"{option} must look like 512 or 512x768 (height x width), got '{text}'")
    return (values[0], values[-1])


def main() -> None:
    app(prog_name="sdtrt")
