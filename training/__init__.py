"""Finedefics training: data, attribute contrastive losses, the TRL trainer, recipes and the CLI.

Installed as ``finedefics_training`` (the repository folder is ``training/``).

    from finedefics_training import FinedeficsTrainer, FinedeficsTrainingConfig

    args = FinedeficsTrainingConfig(output_dir="runs/stage1", stage=1)
    trainer = FinedeficsTrainer(model=model, args=args, train_dataset=dataset, processing_class=processor)

The classes are imported when first asked for (as ``trl`` exports its trainers), so importing the package
stays cheap: no torch, transformers or TRL until a class is used.
"""

from __future__ import annotations

from importlib import import_module

_EXPORTS = {
    "FinedeficsTrainer": "trainer", "FinedeficsTrainingConfig": "config", "FinedeficsDataCollator": "collator",
    "FinedeficsContrastiveLoss": "losses", "ContrastiveTexts": "losses", "ContrastiveBatch": "losses",
}


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


__all__ = sorted(_EXPORTS)
