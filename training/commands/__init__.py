"""Compatibility alias: the subcommands moved to :mod:`finedefics_cli.commands`.

``finedefics_training.commands.<name>`` IS ``finedefics_cli.commands.<name>`` (the same module object).
"""

import importlib
import sys

from finedefics_cli import COMMANDS

for _command in COMMANDS:
    _name = _command.replace("-", "_")
    _module = importlib.import_module(f"finedefics_cli.commands.{_name}")
    sys.modules[f"{__name__}.{_name}"] = _module
    globals()[_name] = _module
