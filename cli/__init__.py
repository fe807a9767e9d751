"""The ``finedefics`` command line: one entry point with subcommands, like ``trl`` or ``accelerate``.

Installed as ``finedefics_cli`` (the repository folder is ``cli/``); ``python -m finedefics_cli`` runs it.
Commands parse their arguments and delegate to the libraries (``finedefics_data``, ``finedefics_eval``,
``finedefics_training``); they hold no logic of their own that a Python user could not call.

Each subcommand lives in ``commands/<name>.py`` and exposes ``register(subparsers)``, which adds
its parser and sets ``func``. Command modules import heavy libraries (torch, transformers) inside
their ``run`` functions, so that ``finedefics --help`` answers at once.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

# Order is the order shown in ``finedefics --help``.
COMMANDS = ("demo", "data", "init-model", "train", "two-stage", "eval", "app", "push", "convert", "export")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="finedefics",
        description="Attribute-augmented alignment for fine-grained visual recognition with multimodal LLMs.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        # A command that fails to import is an error, never a command silently missing from --help.
        importlib.import_module("finedefics_cli.commands." + name.replace("-", "_")).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # Recipe commands (train, two-stage) hand their own arguments to TRL's parser.
    args, extra = parser.parse_known_args(argv)
    if extra:
        if not getattr(args, "pass_through", False):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.recipe_args = extra
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return args.func(args) or 0
    except (ValueError, FileNotFoundError) as error:
        # Bad input is reported as one clear line, not a traceback.
        print(f"finedefics {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
