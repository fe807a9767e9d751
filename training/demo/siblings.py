"""How often stage I's in-batch negatives are siblings: measured on the batches the training sampler draws.

A contrastive row's in-batch negatives are the other rows of its batch whose category differs. Hard negatives
add siblings on purpose; this measures how many siblings the batches bring by chance. For the synthetic
benchmark a sibling is a species of the same genus (``categories.json``'s ``genus``); for data without genera,
a category's hard-negative list stands for its siblings.
"""

from __future__ import annotations

import tempfile
from collections import Counter


def sibling_relation(categories: list[dict], negatives: dict[str, list[str]]) -> tuple[dict[str, set[str]], str]:
    """``({category: its siblings}, how they were found)``: same genus where every category has one, else each
    category's hard negatives."""
    if categories and all(category.get("genus") for category in categories):
        genus = {category["name"]: category["genus"] for category in categories}
        return ({name: {other for other, g in genus.items() if g == genus[name] and other != name} for name in genus},
                "same genus")
    return {name: set(others) - {name} for name, others in negatives.items()}, "hard-negative lists"


def sibling_negative_share(batches: list[list[str]], siblings: dict[str, set[str]]) -> dict:
    """Over every ordered pair (row, other row of a different category) of every batch: how many there are and
    the share whose categories are siblings (``siblings[row's category]`` holds the other's)."""
    pairs = sibling_pairs = 0
    for batch in batches:
        for i, category in enumerate(batch):
            for j, other in enumerate(batch):
                if i != j and other != category:
                    pairs += 1
                    sibling_pairs += other in siblings.get(category, ())
    return {"share": sibling_pairs / pairs if pairs else None, "pairs": pairs, "sibling_pairs": sibling_pairs,
            "batches": len(batches)}


def chance_share(categories: list[str], siblings: dict[str, set[str]]) -> float | None:
    """The share a batch drawn uniformly from ``categories`` (the training rows) brings in expectation."""
    counts = Counter(categories)
    pairs = sum(n * m for a, n in counts.items() for b, m in counts.items() if a != b)
    sibling = sum(n * m for a, n in counts.items() for b, m in counts.items() if a != b and b in siblings.get(a, ()))
    return sibling / pairs if pairs else None


def sampler_batches(categories: list[str], batch_size: int, steps: int, seed: int) -> list[list[str]]:
    """The categories of the first ``steps`` batches the Trainer's own training dataloader draws (seed and
    ``data_seed`` = ``seed``, one process, no accumulation: the demo's stage I), epoch after epoch as
    ``Trainer`` iterates them."""
    import datasets
    import torch
    from transformers import Trainer, TrainingArguments
    from transformers.utils import logging as hf_logging

    with tempfile.TemporaryDirectory() as folder:
        args = TrainingArguments(output_dir=folder, per_device_train_batch_size=batch_size, seed=seed, data_seed=seed,
                                 use_cpu=True, report_to="none", remove_unused_columns=False,
                                 dataloader_num_workers=0, max_steps=steps)
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()
        try:
            trainer = Trainer(model=torch.nn.Linear(1, 1), args=args,
                              train_dataset=datasets.Dataset.from_dict({"category": list(categories)}),
                              data_collator=lambda rows: [row["category"] for row in rows])
            loader = trainer.get_train_dataloader()
        finally:
            hf_logging.set_verbosity(verbosity)
        batches, epoch = [], 0
        while len(batches) < steps:
            if hasattr(loader, "set_epoch"):  # as Trainer does at the start of every epoch
                loader.set_epoch(epoch)
            for batch in loader:
                batches.append(batch)
                if len(batches) == steps:
                    break
            epoch += 1
    return batches


def measure_sibling_negatives(data, plan, seed: int) -> dict:
    """The share of sibling in-batch negatives in the demo's stage I batches for ``seed``, and its chance level."""
    categories = list(data.splits["train"]["category"])
    siblings, relation = sibling_relation(data.categories, data.negatives())
    batches = sampler_batches(categories, plan.batch_size, plan.stage1_steps, seed)
    return {**sibling_negative_share(batches, siblings), "chance": chance_share(categories, siblings),
            "relation": relation, "batch_size": plan.batch_size, "steps": plan.stage1_steps, "seed": seed}
