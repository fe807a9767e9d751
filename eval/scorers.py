"""The scoring modes by name: one ``Scorer`` interface, each mode registered once, as ``evaluate`` registers its
metrics and lmms-eval its tasks.

    from finedefics_eval.scorers import scorer_class, scoring_modes
    scoring_modes()                               # ("generate", "likelihood", "embedding", "open_set")
    scorer = scorer_class("likelihood").prepare(model, processor, benchmark, likelihood_answer="letter")
    records = scorer.score(images, items, shared)  # one FOCI-format prediction record per item

A mode is a ``Scorer`` subclass (``scoring.py`` holds the four built in) and one ``register_scorer`` line below
(or in your own module): the registry names the class by its import path, so that reading the modes (the CLI's
``--mode`` choices, ``finedefics --help``) imports no torch. The questions a scorer asks stay in
``finedefics_data.prompts``.
"""

from __future__ import annotations

from importlib import import_module

_SCORERS: dict[str, str] = {}  # mode name -> "module.ClassName" of its Scorer


def register_scorer(name: str, class_path: str) -> None:
    """Register the ``Scorer`` class at ``class_path`` ("package.module.ClassName") as the mode ``name``."""
    if name in _SCORERS:
        raise ValueError(f"a scoring mode named {name!r} is registered already ({_SCORERS[name]})")
    _SCORERS[name] = class_path


def scoring_modes() -> tuple[str, ...]:
    """Every registered mode, in registration order."""
    return tuple(_SCORERS)


def scorer_class(name: str) -> type:
    """The ``Scorer`` class of the mode ``name`` (imported now)."""
    if name not in _SCORERS:
        raise ValueError(f"unknown scoring mode {name!r}; choose from {', '.join(_SCORERS)}")
    module, class_name = _SCORERS[name].rsplit(".", 1)
    return getattr(import_module(module), class_name)


register_scorer("generate", "finedefics_eval.scoring.GenerateScorer")
register_scorer("likelihood", "finedefics_eval.scoring.LikelihoodScorer")
register_scorer("embedding", "finedefics_eval.scoring.EmbeddingScorer")
register_scorer("open_set", "finedefics_eval.scoring.OpenSetScorer")

__all__ = ["register_scorer", "scorer_class", "scoring_modes"]
