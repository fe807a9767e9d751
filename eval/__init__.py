"""Finedefics evaluation: FOCI-style benchmarks, scoring modes, metrics, reports and model cards.

Installed as ``finedefics_eval`` (the repository folder is ``eval/``).
"""
