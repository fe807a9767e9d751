"""The tokenizer corpus of a benchmark folder (:func:`text_corpus`): every text the model reads or writes on it."""

from __future__ import annotations

from pathlib import Path

from ..prompts import (
    CHOICE_LETTERS,
    ObjectNoun,
    describe_instruction,
    multiple_choice_prompt,
    multiple_choice_query,
    open_set_question,
)
from .loading import benchmark_splits, load_categories, load_metadata
from .vocabulary import ATTRIBUTES, NOUN


def text_corpus(data_dir: str | Path) -> list[str]:
    """Every text the model will read or write on this benchmark, for training a tiny tokenizer offline.

    Category and genus names, canonical and per-image descriptions, attribute words, and the
    instruction phrasing (description, open-set and multiple-choice questions and answers).
    """
    data_dir = Path(data_dir)
    categories = load_categories(data_dir)
    texts = [c["name"] for c in categories] + sorted({c["genus"] for c in categories})
    texts += [c["description"] for c in categories]
    for split in benchmark_splits(data_dir):
        texts += [row["attribute"] for row in load_metadata(data_dir, split)]
    texts += [" ".join(values) for values in ATTRIBUTES.values()] + [" ".join(ATTRIBUTES)]
    texts += _instruction_texts(categories)
    return list(dict.fromkeys(t for t in texts if t))


def _instruction_texts(categories: list[dict]) -> list[str]:
    names = [c["name"] for c in categories]
    noun = ObjectNoun.of(NOUN)
    return [
        describe_instruction(noun),
        open_set_question(noun),
        multiple_choice_prompt(multiple_choice_query(noun), names[:len(CHOICE_LETTERS)], CHOICE_LETTERS),
        "A", "B", "C", "D", "Answer: A", f"The {NOUN} is a {names[0]}.",
    ]
