"""The paper's premise, measured: does a model describe what it sees, and know what each category looks like?

Finedefics starts from the finding that an MLLM extracts object attributes well and knows, in words,
what each category looks like, yet fails to recognise the category from the image (the two are not
aligned). The demo checks that its base model reproduces this before comparing training recipes:

- object information extraction: asked to describe a held-out image, which share of the image's true
  attribute values does the answer state; and of the values that set its category apart from its
  siblings (the ones fine-grained recognition turns on);
- category knowledge: asked in text what a category looks like, which share of its attribute values
  does the answer state (rare categories reported apart: their names were seen in text only);
- multiple choice in text: the same knowledge asked as a 4-way question without an image ("Which of
  these birds has ...? A. ... B. ..."): a model that knows every description but cannot answer this
  cannot show its recognition in the FOCI generate mode either, whatever it sees;
- misalignment: 4-way recognition of the same model (from the evaluation report).

Answers are scored attribute by attribute with a parser of the description grammar when the data
have structured attributes (the synthetic benchmark); otherwise by the share of the reference
description's words that the answer contains.
"""

from __future__ import annotations

import json
import logging
import re
from collections import Counter
from collections.abc import Callable

from finedefics_data.prompts import (
    KNOWLEDGE_QUESTION,
    LETTERS,
    ObjectNoun,
    answer_letter,
    describe_instruction,
    knowledge_question,
    lookup_choice_query,
    multiple_choice_prompt,
    reverse_knowledge_question,
)

logger = logging.getLogger(__name__)

DESCRIPTION_MAX_NEW_TOKENS = 48
_FUNCTION_WORDS = frozenset("a an the and with of is has its it this which in on overall covers bird".split())


# ----------------------------------------------------------------------------- generation
def generate_answers(model, processor, questions: list[str], images: list | None = None, batch_size: int = 32,
                     max_new_tokens: int = DESCRIPTION_MAX_NEW_TOKENS, desc: str = "answering") -> list[str]:
    """Greedy answers to chat-formatted questions, with or without one image each, in batches."""
    from tqdm.auto import tqdm

    from finedefics_eval.scoring import greedy_answers

    answers = []
    for start in tqdm(range(0, len(questions), batch_size), desc=desc, unit="batch", leave=False):
        chunk_images = images[start:start + batch_size] if images is not None else None
        answers += greedy_answers(model, processor, chunk_images, questions[start:start + batch_size], max_new_tokens)
    return answers


def description_words(text: str, vocabulary: set[str] | None = None) -> dict[str, str]:
    """A description's content words as ``{word: word}``: the scoring unit when there are no attributes.

    ``vocabulary`` (:func:`attribute_words`) keeps only the words that describe the data's attributes."""
    return {word: word for word in re.findall(r"[a-z]+", text.lower())
            if word not in _FUNCTION_WORDS and (vocabulary is None or word in vocabulary)}


def attribute_words(descriptions: list[str], noun: ObjectNoun | None = None) -> set[str] | None:
    """The words of the data's descriptions that tell categories apart: neither the noun nor a word every
    category's description holds ("car", "body", "with": the template, not an attribute). None (every word
    counts) for fewer than two descriptions."""
    worded = [set(description_words(text)) for text in descriptions if text]
    if len(worded) < 2:
        return None
    template = set.intersection(*worded) | ({noun.singular.lower(), noun.plural.lower()} if noun else set())
    return set.union(*worded) - template


def recall(stated: list[dict[str, str]], truths: list[dict[str, str]], keys: list[list[str]] | None = None) -> dict:
    """Share of true values stated, overall and per attribute; ``keys`` restricts each row to some attributes."""
    hits = total = 0
    per_attribute: dict[str, list[int]] = {}
    for row, (answer, truth) in enumerate(zip(stated, truths, strict=True)):  # misaligned rows: an error
        for name in (keys[row] if keys is not None else truth):
            if name not in truth:
                continue  # not visible in this image
            correct = int(answer.get(name) == truth[name])
            hits, total = hits + correct, total + 1
            per_attribute.setdefault(name, []).append(correct)
    return {"recall": hits / total if total else None, "values": total,
            "per_attribute": {name: sum(v) / len(v) for name, v in sorted(per_attribute.items())}}


# ----------------------------------------------------------------------------- the premise
def object_information_extraction(model, processor, rows: list[dict], categories: list[dict],
                                  parse: Callable[[str], dict] | None, noun: ObjectNoun,
                                  distinguishing: dict[str, list[str]], batch_size: int = 32) -> dict:
    """Describe held-out images; score the answers against each image's visible attributes.

    ``rows`` carry ``image`` (PIL), ``category``, ``attribute`` (the reference description) and
    ``attributes`` (JSON of the visible values; ``"{}"`` or absent when the data have none).
    """
    question = describe_instruction(noun)
    answers = generate_answers(model, processor, [question] * len(rows), [row["image"] for row in rows],
                               batch_size, desc="describing images")
    structured = parse is not None and all(_attributes(row) for row in rows)
    vocabulary = None if structured else attribute_words([c.get("description", "") for c in categories], noun)
    references = [reference_description(row, categories) for row in rows]
    truths = [_attributes(row) if structured else description_words(reference, vocabulary)
              for row, reference in zip(rows, references)]
    stated = [parse(answer) if structured else description_words(answer, vocabulary) for answer in answers]
    result = {"scored_by": "attribute parser" if structured else "description words", "images": len(rows),
              "question": question, **recall(stated, truths)}
    if not structured:
        result["references"] = dict(Counter(
            "the image's own description" if row.get("attribute") else
            "its category's description" if reference else "none (not scored)"
            for row, reference in zip(rows, references)))
    if structured:
        keys = [distinguishing.get(row["category"], []) for row in rows]
        result["distinguishing"] = recall(stated, truths, keys)
    result["examples"] = [{"category": row["category"], "answer": answer, "reference": reference}
                          for row, answer, reference in list(zip(rows, answers, references))[:5]]
    return result


def reference_description(row: dict, categories: list[dict]) -> str:
    """What an image's description is scored against: its own description, else its category's (a test split
    read from an image folder has labels only), else nothing."""
    if row.get("attribute"):
        return row["attribute"]
    return next((c.get("description") or "" for c in categories if c["name"] == row["category"]), "")


def category_knowledge(model, processor, categories: list[dict], parse: Callable[[str], dict] | None,
                       rare: set[str], batch_size: int = 32, noun: ObjectNoun | None = None) -> dict:
    """Ask, in text, what each category looks like; score against its attributes (or description words)."""
    questions = [knowledge_question(category["name"]) for category in categories]
    answers = generate_answers(model, processor, questions, None, batch_size, desc="asking what categories look like")
    structured = parse is not None and all(category.get("attributes") for category in categories)
    vocabulary = None if structured else attribute_words([c["description"] for c in categories], noun)
    truths = [category["attributes"] if structured else description_words(category["description"], vocabulary)
              for category in categories]
    stated = [parse(answer) if structured else description_words(answer, vocabulary) for answer in answers]
    result = {"scored_by": "attribute parser" if structured else "description words", "categories": len(categories),
              "question": KNOWLEDGE_QUESTION, **recall(stated, truths)}
    rare_rows = [i for i, category in enumerate(categories) if category["name"] in rare]
    if rare_rows:
        result["rare"] = recall([stated[i] for i in rare_rows], [truths[i] for i in rare_rows])
    result["examples"] = [{"category": c["name"], "answer": a} for c, a in list(zip(categories, answers))[:3]]
    return result


def multiple_choice_in_text(model, processor, categories: list[dict], negatives: dict[str, list[str]],
                            noun: ObjectNoun, rare: set[str], batch_size: int = 32, named: bool = False) -> dict:
    """Text-only 4-way questions "which category has this description?", options = the category and its hard
    negatives; each category is asked once with the answer at every letter, so a letter prior scores chance.
    The description is worded as the base never saw it in a multiple choice (``base.held_out_description``).

    ``named``: ask "which of these is <category>?" instead, the copy form of the same skill (find the option,
    write its letter) without working out the category first."""
    from .base import held_out_description

    questions, answers, is_rare = [], [], []
    for category in categories:
        others = [name for name in negatives.get(category["name"], []) if name != category["name"]][:3]
        if not others:
            continue
        for position in range(len(others) + 1):
            options = others[:position] + [category["name"]] + others[position:]
            question = lookup_choice_query(category["name"]) if named else \
                reverse_knowledge_question(noun, held_out_description(category))
            questions.append(multiple_choice_prompt(question, options))
            answers.append(LETTERS[position])
            is_rare.append(category["name"] in rare)
    replies = generate_answers(model, processor, questions, None, batch_size, max_new_tokens=4,
                               desc="multiple choice in text")
    correct = [answer_letter(reply) == answer for reply, answer in zip(replies, answers)]
    letters = [answer_letter(reply) or "?" for reply in replies]
    result = {"questions": len(questions), "accuracy": sum(correct) / len(correct) if correct else None,
              "answered_letters": {letter: letters.count(letter) for letter in sorted(set(letters))}}
    rare_correct = [c for c, r in zip(correct, is_rare) if r]
    if rare_correct:
        result["rare_accuracy"] = sum(rare_correct) / len(rare_correct)
    return result


def _attributes(row: dict) -> dict[str, str]:
    value = row.get("attributes") or "{}"
    return json.loads(value) if isinstance(value, str) else dict(value)


__all__ = ["attribute_words", "category_knowledge", "description_words", "generate_answers", "multiple_choice_in_text",
           "object_information_extraction", "recall"]
