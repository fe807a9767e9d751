"""Category names as the open-set protocol compares them: normalised, then matched.

Training data (``data csv`` recognising a category inside a free-text answer) and evaluation (open-set
accuracy, FOCI's name checks) apply the same rule, so it lives here, below both.
"""

from __future__ import annotations

import re

_PUNCTUATION = re.compile(r"[^\w\s]|_", flags=re.UNICODE)
_LEADING_ARTICLE = re.compile(r"^(?:a|an|the)\s+")


def normalize_name(name: str) -> str:
    """A category name reduced for open-set matching: case, underscores, punctuation and articles removed.

    "Black_footed_Albatross", "black-footed albatross." and "The Black Footed Albatross" all give
    "black footed albatross". Letters outside ASCII are kept (casefolded, NFKC-normalised).
    """
    import unicodedata

    text = unicodedata.normalize("NFKC", name).casefold()
    text = " ".join(_PUNCTUATION.sub(" ", text).split())
    return _LEADING_ARTICLE.sub("", text)


def names_match(answer: str, label: str) -> bool:
    """Open-set correctness: the answer names the label once both are normalised."""
    return bool(normalize_name(answer)) and normalize_name(answer) == normalize_name(label)


__all__ = ["names_match", "normalize_name"]
