"""Compatibility alias: the command line moved to :mod:`finedefics_cli` (folder ``cli/``).

``python -m finedefics_training.cli ...`` and ``from finedefics_training.cli import main`` keep working.
"""

import sys

from finedefics_cli import COMMANDS, build_parser, main

__all__ = ["COMMANDS", "build_parser", "main"]

if __name__ == "__main__":
    sys.exit(main())
