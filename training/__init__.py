"""Finedefics training: data, attribute contrastive losses, the TRL trainer, recipes and the CLI.

Installed as ``finedefics_training`` (the repository folder is ``training/``).
"""
