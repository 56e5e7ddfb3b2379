"""`python -m sdtrt.cli`."""

from sdtrt.cli.common import main

main()
