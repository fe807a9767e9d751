"""Every question Finedefics asks a model, in training and in evaluation: the ONE source of their text.

The training collator (stage I's description instruction, stage II's open-set and multiple-choice
recognition questions) and the evaluation (FOCI's multiple-choice prompt, open-set naming) both build
their prompts here, so a checkpoint is evaluated with exactly the questions it was trained on.

The questions name the kind of object a dataset holds (its *noun*: "bird", "car", ...). An
:class:`ObjectNoun` carries the singular and the plural, because English plurals are not always
"+s" and FOCI's own query uses fixed plurals (its aircraft query says "aircrafts"), and the word for one
of its categories in the open-set question (a bird's "species", a car's "model", a dog's "breed":
:data:`CATEGORY_WORDS`). The noun is set once for a dataset (``finedefics data csv --noun``
``--category-word``, or ``object_noun`` / ``object_category_word`` in a recipe), stored in every checkpoint
trained on it (``config.object_noun`` / ``object_noun_plural`` / ``object_category_word``), and read back
by ``finedefics eval`` and the model card.

    noun = ObjectNoun.of("car")                                  # plural "cars"
    open_set_question(noun)        # "What is the model of the car in the image?"
    multiple_choice_prompt(multiple_choice_query(noun), ["Alpine A110", "Lotus Elise"])
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .choices import read_options

# Letters of the options: FOCI shows four (A-D); training's multiple choice may show up to ten.
CHOICE_LETTERS = "ABCD"
LETTERS = "ABCDEFGHIJ"

DESCRIBE_INSTRUCTION = "Describe the attributes of the {singular} in the image."  # stage I
OPEN_SET_QUESTION = "What is the {category_word} of the {singular} in the image?"  # stage II and open-set eval
MULTIPLE_CHOICE_QUERY = "Which of these {plural} is shown in the image?"  # FOCI's query (stage II, eval)
KNOWLEDGE_QUESTION = "What does {article} {name} look like?"  # category knowledge, asked in text (demo base, premise)
REVERSE_KNOWLEDGE_QUESTION = "Which {singular} is {description}?"  # the same knowledge, the other way round
DESCRIPTION_CHOICE_QUERY = "Which description matches the {singular} in the image?"  # demo base: multiple choice
LOOKUP_CHOICE_QUERY = "Which of these is {option}?"  # demo base: find the option the question names (text only)
CHOICES_HEADER = "\nChoices:\n"
# How a multiple choice is answered: FOCI's rule reads the first character, so every style starts with the letter
# except "name" (scored by the likelihood mode only).
MULTIPLE_CHOICE_ANSWERS = {"letter": "{letter}", "letter_name": "{letter}. {option}", "name": "{option}"}
ANSWER_INSTRUCTION = "\nAnswer with the letter from the given choices directly."

# The config fields a checkpoint stores its noun in (``FinedeficsConfig``).
NOUN_FIELD, PLURAL_FIELD, CATEGORY_WORD_FIELD = "object_noun", "object_noun_plural", "object_category_word"

# What a category of the objects is called in the open-set question ("What is the model of the car ...?"), per
# noun: the paper's six domains and vehicles. Other nouns, and checkpoints and data folders that record no word
# (all of them trained with it), say "species".
LEGACY_CATEGORY_WORD = "species"
CATEGORY_WORDS = {
    "bird": "species", "car": "model", "vehicle": "model", "truck": "model", "aircraft": "variant",
    "airplane": "variant", "aeroplane": "variant", "plane": "variant", "dog": "breed", "pet": "breed", "cat": "breed",
    "flower": "species", "plant": "species", "food": "dish", "dish": "dish",
}


def default_category_word(singular: str) -> str:
    """The category word of a noun (:data:`CATEGORY_WORDS`), else "species"."""
    return CATEGORY_WORDS.get(singular.strip().lower(), LEGACY_CATEGORY_WORD)


@dataclass(frozen=True)
class ObjectNoun:
    """The noun of a dataset's objects, with its plural ("bird"/"birds", "aircraft"/"aircraft") and the word for
    one of its categories ("species" of a bird, "model" of a car)."""

    singular: str
    plural: str
    category_word: str = LEGACY_CATEGORY_WORD

    @classmethod
    def of(cls, singular: str, plural: str | None = None, category_word: str | None = None) -> ObjectNoun:
        """``plural`` defaults to :func:`english_plural` of ``singular`` and ``category_word`` to
        :func:`default_category_word`; give them where those are wrong."""
        if not isinstance(singular, str) or not singular.strip():
            raise ValueError(f"the object noun must be a non-empty word, got {singular!r}")
        for what, word in (("plural", plural), ("category word", category_word)):
            if word is not None and (not isinstance(word, str) or not word.strip()):
                raise ValueError(f"the {what} of {singular!r} must be a non-empty word, got {word!r}")
        singular = singular.strip()
        return cls(singular, plural.strip() if plural else english_plural(singular),
                   category_word.strip() if category_word else default_category_word(singular))

    @classmethod
    def from_config(cls, config) -> ObjectNoun | None:
        """The noun stored in a checkpoint's config (an object or a ``config.json`` dict); None if it has none.

        A config without a category word was trained with "species" (the only word before it was recorded)."""
        get = config.get if isinstance(config, dict) else lambda name: getattr(config, name, None)
        if not get(NOUN_FIELD):
            return None
        return cls.of(get(NOUN_FIELD), get(PLURAL_FIELD), get(CATEGORY_WORD_FIELD) or LEGACY_CATEGORY_WORD)

    def config_fields(self) -> dict[str, str]:
        """``{object_noun, object_noun_plural, object_category_word}``: what a checkpoint's config (or a data
        folder) stores."""
        return {NOUN_FIELD: self.singular, PLURAL_FIELD: self.plural, CATEGORY_WORD_FIELD: self.category_word}

    def __str__(self) -> str:
        text = (self.singular if self.plural == english_plural(self.singular)
                else f"{self.singular} (plural {self.plural})")
        return text if self.category_word == default_category_word(self.singular) \
            else f"{text}, category word {self.category_word!r}"


def english_plural(singular: str) -> str:
    """The regular English plural: "bird" -> "birds", "finch" -> "finches", "butterfly" -> "butterflies"."""
    if re.search(r"(s|x|z|ch|sh)$", singular):
        return singular + "es"
    if re.search(r"[^aeiou]y$", singular):
        return singular[:-1] + "ies"
    return singular + "s"


# When neither the data, the recipe nor the checkpoint names one.
DEFAULT_NOUN = ObjectNoun("object", "objects", LEGACY_CATEGORY_WORD)


# ----------------------------------------------------------------------------- questions
def describe_instruction(noun: ObjectNoun) -> str:
    """Stage I's instruction: describe the object's attributes."""
    return DESCRIBE_INSTRUCTION.format(singular=noun.singular)


def knowledge_question(name: str) -> str:
    """Asked in text only: what a category looks like (answered with its description)."""
    return KNOWLEDGE_QUESTION.format(article="an" if name[:1].lower() in "aeiou" else "a", name=name)


def reverse_knowledge_question(noun: ObjectNoun, description: str) -> str:
    """Asked in text only: which category a description names ("Which bird is a slender bird with ...?")."""
    description = description.strip().rstrip(".")
    return REVERSE_KNOWLEDGE_QUESTION.format(singular=noun.singular,
                                             description=description[:1].lower() + description[1:])


def description_choice_query(noun: ObjectNoun) -> str:
    """The query of a multiple choice among descriptions (not names): the generic skill of answering with a letter."""
    return DESCRIPTION_CHOICE_QUERY.format(singular=noun.singular)


def lookup_choice_query(option: str) -> str:
    """The query of a multiple choice that names its answer ("Which of these is Ardran Thistledart?"): the demo
    base learns to find an option and write its letter with it, and ``benchmarks/letter_lookup.py`` probes it."""
    return LOOKUP_CHOICE_QUERY.format(option=option)


def open_set_question(noun: ObjectNoun) -> str:
    """The open-set recognition question (stage II and the ``open_set`` evaluation)."""
    return OPEN_SET_QUESTION.format(category_word=noun.category_word, singular=noun.singular)


def multiple_choice_query(noun: ObjectNoun) -> str:
    """FOCI's multiple-choice query, e.g. "Which of these cars is shown in the image?"."""
    return MULTIPLE_CHOICE_QUERY.format(plural=noun.plural)


def multiple_choice_prompt(query: str, options: list[str], letters: str = LETTERS) -> str:
    """FOCI's multiple-choice prompt for ``options`` in the order given.

    ``{query}\\nChoices:\\nA. {option}\\nB. {option}...\\nAnswer with the letter from the given choices directly.``
    """
    if len(options) > len(letters):
        raise ValueError(f"{len(options)} options but only {len(letters)} letters ({letters})")
    formatted = "\n".join(f"{letters[i]}. {option}" for i, option in enumerate(options))
    return f"{query}{CHOICES_HEADER}{formatted}{ANSWER_INSTRUCTION}"


def multiple_choice_answer(letter: str, option: str, style: str = "letter") -> str:
    """The answer to a multiple choice in ``style`` (see ``MULTIPLE_CHOICE_ANSWERS``): "B" or "B. Lotus Elise"."""
    if style not in MULTIPLE_CHOICE_ANSWERS:
        raise ValueError(f"unknown multiple-choice answer style {style!r}; choose one of "
                         f"{sorted(MULTIPLE_CHOICE_ANSWERS)}")
    return MULTIPLE_CHOICE_ANSWERS[style].format(letter=letter, option=option)


# ----------------------------------------------------------------------------- reading questions back
_LETTER_ANSWER = re.compile(r"\(?([A-Z])\)?(?:[.:)](?:\s.*)?)?", flags=re.DOTALL)


def multiple_choice_options(question: str) -> dict[str, str] | None:
    """``{letter: option}`` of a multiple-choice question, or None if it is not one.

    Reads this module's layout (``Choices:`` then ``"A. name"`` lines) and the others people write
    (``choices.read_options``: no header, ``A)`` or ``(A)`` marks, options inline).
    """
    return read_options(question)


def answer_letter(answer: str) -> str | None:
    """The option letter an answer gives ("B", "B.", "(B)", "B. Lotus Elise", "Answer: B"), else None.

    Stricter than FOCI's scoring rule (which reads the first character only): a name that merely
    starts with a capital ("Alpine A110") is not a letter.
    """
    match = _LETTER_ANSWER.fullmatch(answer.strip().replace("Answer: ", "").strip())
    return match.group(1) if match else None


__all__ = [
    "ANSWER_INSTRUCTION", "CATEGORY_WORDS", "CATEGORY_WORD_FIELD", "CHOICES_HEADER", "LEGACY_CATEGORY_WORD",
    "default_category_word", "CHOICE_LETTERS", "DEFAULT_NOUN", "DESCRIBE_INSTRUCTION",
    "DESCRIPTION_CHOICE_QUERY", "LOOKUP_CHOICE_QUERY", "MULTIPLE_CHOICE_ANSWERS", "description_choice_query",
    "lookup_choice_query", "multiple_choice_answer",
    "KNOWLEDGE_QUESTION", "LETTERS", "MULTIPLE_CHOICE_QUERY", "OPEN_SET_QUESTION", "REVERSE_KNOWLEDGE_QUESTION",
    "ObjectNoun", "answer_letter", "describe_instruction", "english_plural", "knowledge_question",
    "reverse_knowledge_question", "multiple_choice_options", "multiple_choice_prompt", "multiple_choice_query",
    "open_set_question",
]
