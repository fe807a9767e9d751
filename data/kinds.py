"""What kind of training row a record is, and what each Finedefics stage trains on it.

One rule, used by the readers' summaries, the training collator and the trainer's per-stage summary:

==================  ===================================================================================
kind                row
==================  ===================================================================================
``category only``   no explicit question: the trainer asks its own (stage I: describe the attributes,
                    or name the object when the row has no description; stage II: open-set or
                    multiple choice over the row's hard negatives)
``description``     an explicit question about an image with a category and an attribute description
                    whose answer is not a recognition answer, as in the reference's pretrain.csv: the
                    answer is the description, in the attribute cell's words or in others (the readers
                    count the latter). Stage I trains it as given, with the contrastive terms; stage II
                    asks a recognition question about the image instead, because describing is stage I's
                    instruction (otherwise "stage II" on such data would only tune descriptions)
``open-set``        an explicit question about an image whose answer names the row's category
``multiple choice`` an explicit question about an image, with lettered choices (any layout of
                    ``choices.py``), whose answer picks the row's category (letter, letter and name, or name)
``instruction``     any other explicit question and answer (with or without a category or image)
==================  ===================================================================================

Explicit ``open-set``, ``multiple choice`` and ``instruction`` rows are trained as given in either stage.

Reading the reference's stage II file (finetune.csv), whose rows have no category, a row's category is
derived from its answer when it is a recognition question: :func:`read_recognition`.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from .choices import NO_OPTIONS_FOUND, looks_like_a_choice, picked_option, read_options
from .names import names_match, normalize_name

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
    question, answer, category = row.get("question"), row.get("answer") or "", row.get("category")
    has_image = row.get("image") is not None
    if not question:
        return GENERATED if category and has_image else None
    if category and has_image:
        if row.get("attribute") and answer == row["attribute"]:
            return DESCRIPTION
        options = read_options(question)
        if options:
            letter, _ = picked_option(answer, options)
            if letter is not None and names_match(options[letter], category):
                return MULTIPLE_CHOICE
        if names_match(answer, category):
            return OPEN_SET
        if row.get("attribute"):
            return DESCRIPTION  # image, category and description: contrastive, whatever the answer's wording
    return INSTRUCTION


def is_recognition_type(row_type: str | None) -> bool:
    return re.sub(r"[_\s]+", "-", (row_type or "").strip().lower()) in RECOGNITION_TYPES


@dataclass(frozen=True)
class Recognition:
    """How a question/answer row without a category cell reads (:func:`read_recognition`).

    ``kind`` is OPEN_SET or MULTIPLE_CHOICE for a recognition question, whose ``category`` is the name its
    answer picks (the known spelling when ``known``), else INSTRUCTION. ``unread_choice`` says why a
    multiple-choice question was not read as recognition (None when it was, or when it is no multiple choice).
    """

    kind: str
    category: str | None = None
    known: bool = False
    unread_choice: str | None = None


NO_KNOWN_OPTION = "none of its options is a known category"


def read_recognition(question: str, answer: str, row_type: str | None, known_categories: Mapping[str, str],
                     allow_new_categories: bool = False) -> Recognition:
    """Read a question without a category cell: a recognition question, and the category its answer picks?

    A multiple choice (any layout of ``choices.py``) is recognition when its answer picks an option (by letter,
    letter and name, or name) and its ``type`` says recognition (:data:`RECOGNITION_TYPES`), one of its
    options is a known category, or ``allow_new_categories``; the category is the option picked. Any other
    question is recognition when its answer is a known category name, or when its type says so. Names are
    compared as open-set answers are scored; ``known_categories`` maps :func:`normalize_name` of each known
    name to its spelling. An answer that is only an option mark ("B", "B. Foo") never counts as a name.

    Raises:
        ValueError: the type says recognition but no category can be read from the answer.
    """
    typed = is_recognition_type(row_type)
    options = read_options(question)
    if options:
        return _read_choice(options, answer, typed, known_categories, allow_new_categories)
    if looks_like_a_choice(answer):
        if typed:
            raise ValueError(f"{answer!r} is an option letter, but the question lists no options in a known layout "
                             "('A. name', 'A) name' or '(A) name', on lines or inline)")
        return Recognition(INSTRUCTION, unread_choice=NO_OPTIONS_FOUND)
    name = answer.strip().rstrip(".").strip()
    if known_categories.get(normalize_name(name)):
        return Recognition(OPEN_SET, known_categories[normalize_name(name)], known=True)
    if not typed:
        return Recognition(INSTRUCTION)
    if not normalize_name(name):
        raise ValueError(f"type {row_type!r} marks a recognition question, but the answer {answer!r} names nothing")
    return Recognition(OPEN_SET, name)


def _read_choice(options: dict[str, str], answer: str, typed: bool, known: Mapping[str, str],
                 allow_new_categories: bool) -> Recognition:
    letter, problem = picked_option(answer, options)
    if letter is None:
        if typed:
            raise ValueError(f"{problem}: {answer!r}, the choices being {options}")
        return Recognition(INSTRUCTION, unread_choice=problem)
    picked = options[letter].strip().rstrip(".").strip()
    if known.get(normalize_name(picked)):
        return Recognition(MULTIPLE_CHOICE, known[normalize_name(picked)], known=True)
    if typed or allow_new_categories or any(normalize_name(option) in known for option in options.values()):
        return Recognition(MULTIPLE_CHOICE, picked)
    return Recognition(INSTRUCTION, unread_choice=NO_KNOWN_OPTION)


def derive_recognition(question: str, answer: str, row_type: str | None,
                       known_categories: Mapping[str, str]) -> tuple[str, str] | None:
    """``(category, kind)`` of :func:`read_recognition` for a recognition question, else None."""
    read = read_recognition(question, answer, row_type, known_categories)
    return (read.category, read.kind) if read.kind in RECOGNITION_KINDS else None


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
    "ASKED_BY_TRAINER", "DESCRIPTION", "GENERATED", "INSTRUCTION", "KINDS", "MULTIPLE_CHOICE", "NO_KNOWN_OPTION",
    "OPEN_SET", "RECOGNITION_KINDS", "RECOGNITION_TYPES", "Recognition", "derive_recognition",
    "is_recognition_treatment", "is_recognition_type", "known_category_index", "read_recognition", "row_kind",
    "stage_plan", "stage_treatment",
]
