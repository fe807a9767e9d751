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


class DuplicateCategoryNames(ValueError):
    """Category names that differ only in case, spacing or punctuation: two categories to the data, one to the
    open-set protocol (which would then score an answer right for either)."""


def spelling_groups(names) -> dict[str, list[str]]:
    """``{normalised: [spellings, first seen first]}`` for the normalised names more than one spelling shares."""
    groups: dict[str, list[str]] = {}
    for name in names:
        if isinstance(name, str) and name.strip():
            spellings = groups.setdefault(normalize_name(name), [])
            if name not in spellings:
                spellings.append(name)
    return {key: spellings for key, spellings in groups.items() if len(spellings) > 1}


def unify_category_names(records: list[dict], known=(), merge: bool = False, source: str = "the data"
                         ) -> dict[str, str]:
    """Refuse (or, with ``merge``, merge) category names of ``records`` that normalise alike.

    Names are read from every record's ``category`` and ``neg_categories`` and from ``known`` (the categories
    already in the dataset folder, whose spelling wins). Merging rewrites the records in place, each spelling to
    the known one, else the most frequent (ties: first seen), and drops a negative that became the row's own
    category or a repeat (with its ``neg_attributes`` entry). Returns ``{spelling: the one it became}``.
    """
    known = [name for name in known if isinstance(name, str)]
    counts: dict[str, int] = {}  # rows of each category; a name seen only as a negative counts 0
    for record in records:
        for name in record.get("neg_categories") or []:
            counts.setdefault(name, 0)
        if isinstance(record.get("category"), str):
            counts[record["category"]] = counts.get(record["category"], 0) + 1
    groups = spelling_groups([*known, *counts])
    if not groups:
        return {}
    if not merge:
        def shown(name: str) -> str:
            return f"{name!r} ({counts.get(name, 0)} rows{', in the folder' if name in known else ''})"

        listed = "; ".join(" and ".join(map(shown, spellings)) for spellings in list(groups.values())[:5])
        raise DuplicateCategoryNames(
            f"{source}: {len(groups)} category names are spelled more than one way (they differ only in case, "
            f"spacing or punctuation, so they would be separate categories that open-set answers cannot tell "
            f"apart): {listed}{' ...' if len(groups) > 5 else ''}. Fix the spellings, or pass "
            "--merge-duplicate-names to merge each into its most frequent spelling (the folder's, where it has one)")
    renamed = {}
    for spellings in groups.values():
        keep = next((name for name in spellings if name in known), None) or \
            max(spellings, key=lambda name: (counts.get(name, 0), -spellings.index(name)))
        renamed.update({name: keep for name in spellings if name != keep})
    for record in records:
        _rename_in(record, renamed)
    return renamed


def _rename_in(record: dict, renamed: dict[str, str]) -> None:
    if record.get("category") in renamed:
        record["category"] = renamed[record["category"]]
    names = record.get("neg_categories")
    if not names:
        return
    descriptions = record.get("neg_attributes") or []
    paired = len(descriptions) == len(names)
    kept, kept_descriptions = [], []
    for index, name in enumerate(names):
        name = renamed.get(name, name)
        if name == record.get("category") or name in kept:
            continue
        kept.append(name)
        if paired:
            kept_descriptions.append(descriptions[index])
    record["neg_categories"] = kept
    if paired:
        record["neg_attributes"] = kept_descriptions


__all__ = ["DuplicateCategoryNames", "names_match", "normalize_name", "spelling_groups", "unify_category_names"]
