"""Subcommands of the ``finedefics`` CLI, one module each (see ``finedefics_cli``)."""
