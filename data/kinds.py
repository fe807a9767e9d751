"""What kind of training row a record is, and what each Finedefics stage trains on it.

One rule, used by the readers' summaries, the training collator and the trainer's per-stage summary:

==================  ===================================================================================
kind                row
==================  ===================================================================================
``category only``   no explicit question: the trainer asks its own (stage I: describe the attributes,
                    or name the object when the row has no description; stage II: open-set or
                    multiple choice over the row's hard negatives)
``description``     an explicit question whose answer is the row's own attribute description
                    (``answer == attribute``), as in the reference's pretrain.csv. Stage I trains it as
                    given; stage II asks a recognition question about the image instead, because
                    describing is stage I's instruction (otherwise "stage II" on such data would only
                    tune descriptions)
``open-set``        an explicit question about an image whose answer names the row's category
``multiple choice`` an explicit question about an image, with lettered choices, whose answer is the
                    letter of the row's category
``instruction``     any other explicit question and answer (with or without a category or image)
==================  ===================================================================================

Explicit ``open-set``, ``multiple choice`` and ``instruction`` rows are trained as given in either stage.

Reading the reference's stage II file (finetune.csv), whose rows have no category, a row's category is
derived from its answer when it is a recognition question: :func:`derive_recognition`.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping

from .names import names_match, normalize_name
from .prompts import answer_letter, multiple_choice_options

GENERATED = "category only"
DESCRIPTION = "description"
OPEN_SET = "open-set"
MULTIPLE_CHOICE = "multiple choice"
INSTRUCTION = "instruction"
KINDS = (GENERATED, DESCRIPTION, OPEN_SET, MULTIPLE_CHOICE, INSTRUCTION)
RECOGNITION_KINDS = (OPEN_SET, MULTIPLE_CHOICE)

# `type` values that mark a row as a recognition question (compared lower-case, "_" and " " read as "-").
# The reference release does not publish finetune.csv's `type` values (its code only tells
# "multi-image" rows apart), so these are this project's documented vocabulary.
RECOGNITION_TYPES = frozenset({"recognition", "classification", "open-set", "closed-set", "multiple-choice"})


def row_kind(row: Mapping) -> str | None:
    """The kind of a training row (see the module's table); None for a row no stage can train
    (no question, and no category or no image)."""
    question, answer, category = row.get("question"), row.get("answer"), row.get("category")
    has_image = row.get("image") is not None
    if not question:
        return GENERATED if category and has_image else None
    if category and has_image:
        if row.get("attribute") and answer == row["attribute"]:
            return DESCRIPTION
        if names_match(answer or "", category):
            return OPEN_SET
        options = multiple_choice_options(question)
        letter = answer_letter(answer or "") if options else None
        if letter in (options or {}) and names_match(options[letter], category):
            return MULTIPLE_CHOICE
    return INSTRUCTION


def is_recognition_type(row_type: str | None) -> bool:
    return re.sub(r"[_\s]+", "-", (row_type or "").strip().lower()) in RECOGNITION_TYPES


def derive_recognition(question: str, answer: str, row_type: str | None,
                       known_categories: Mapping[str, str]) -> tuple[str, str] | None:
    """``(category, kind)`` for a question without a category cell when it is a recognition question.

    The answered name is the answer itself, or, for a multiple-choice question answered with a letter,
    that option's text. The row is a recognition question when its ``type`` says so
    (:data:`RECOGNITION_TYPES`) or when the answered name is a known category (compared as open-set
    answers are scored: case, punctuation and articles ignored); ``known_categories`` maps
    :func:`normalize_name` of each known name to its spelling. Otherwise None: an instruction row.

    Raises:
        ValueError: the type says recognition but no category can be read from the answer.
    """
    options = multiple_choice_options(question)
    letter = answer_letter(answer) if options else None
    if options and letter is not None:
        if letter not in options:
            if is_recognition_type(row_type):
                raise ValueError(f"answers {letter!r}, which is not one of the choices {sorted(options)}")
            return None
        name, kind = options[letter], MULTIPLE_CHOICE
    else:
        name, kind = answer.strip().rstrip(".").strip(), OPEN_SET
    known = known_categories.get(normalize_name(name))
    if known:
        return known, kind
    if is_recognition_type(row_type):
        if not normalize_name(name):
            raise ValueError(f"type {row_type!r} marks a recognition question, but the answer {answer!r} names "
                             "nothing")
        return name, kind
    return None


def known_category_index(names: Iterable[str]) -> dict[str, str]:
    """``{normalize_name(name): name}`` for :func:`derive_recognition` (the first spelling wins)."""
    index: dict[str, str] = {}
    for name in names:
        if name and name.strip():
            index.setdefault(normalize_name(name), name.strip())
    return index


# ----------------------------------------------------------------------------- stages
ASKED_BY_TRAINER = "asked by the trainer"


def stage_treatment(kind: str, stage: int, has_attribute: bool = True) -> str:
    """What a stage trains on a row of ``kind``, in words (the keys of :func:`stage_plan`)."""
    if kind == GENERATED:
        if stage == 1:
            return (f"description ({ASKED_BY_TRAINER})" if has_attribute
                    else f"open-set ({ASKED_BY_TRAINER}; no description)")
        return f"recognition ({ASKED_BY_TRAINER}: open-set or multiple choice)"
    if kind == DESCRIPTION and stage == 2:
        return f"recognition ({ASKED_BY_TRAINER} instead of the description)"
    return f"{kind} (as given)"


def is_recognition_treatment(treatment: str) -> bool:
    return treatment.startswith(("recognition", OPEN_SET, MULTIPLE_CHOICE))


def stage_plan(rows: Iterable[Mapping], stage: int) -> tuple[Counter, list[int]]:
    """How many rows the stage trains each way, and the positions of rows it cannot train."""
    plan: Counter = Counter()
    untrainable = []
    for position, row in enumerate(rows):
        kind = row_kind(row)
        if kind is None:
            untrainable.append(position)
            continue
        plan[stage_treatment(kind, stage, bool(row.get("attribute")))] += 1
    return plan, untrainable


__all__ = [
    "ASKED_BY_TRAINER", "DESCRIPTION", "GENERATED", "INSTRUCTION", "KINDS", "MULTIPLE_CHOICE", "OPEN_SET",
    "RECOGNITION_KINDS", "RECOGNITION_TYPES", "derive_recognition", "is_recognition_treatment", "is_recognition_type",
    "known_category_index", "row_kind", "stage_plan", "stage_treatment",
]
