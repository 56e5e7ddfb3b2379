"""The `sdtrt` command: turns arguments into options and errors into one line and an exit code.

Each module below registers its commands on the one Typer app when imported, in the order that
`sdtrt --help` lists them.
"""

from sdtrt.cli import models  # noqa: I001
from sdtrt.cli import generate, tools
from sdtrt.cli.common import app, main, parse_size

__all__ = ["app", "generate", "main", "models", "parse_size", "tools"]
