"""Multiple-choice questions and their answers as people write them, read back into options and a letter.

Training data written by others list a multiple choice's options in several layouts, all read here:

- with or without a ``Choices:`` (or ``Options:``) line before the options;
- each option as ``A. name``, ``A) name`` or ``(A) name``;
- one option per line, or all on one line (``Which car is it? A. Foo B. Bar C. Baz``).

Options must be lettered A, B, C, ... in order (at least two): a lone "A." inside a sentence is not a list of
options. Answers may be the letter (``B``, ``B.``, ``(B)``, ``Answer: B``), the letter and the option
(``B. Foo``: both must agree) or the option itself (``Foo``). Names are compared as open-set answers are scored
(``names.py``).

:func:`read_options` returns the options or None; :func:`picked_option` returns the letter an answer picks or
why it picks none, in words the data readers put in their summaries and errors.
"""

from __future__ import annotations

import re

from .names import normalize_name

OPTION_LETTERS = "ABCDEFGHIJ"
_HEADERS = ("choices:", "options:")
_MARK = r"(?:\((?P<paren>[A-J])\)|(?P<letter>[A-J])[.)])"
_OPTION_LINE = re.compile(rf"^\s*{_MARK}\s+(?P<text>\S.*?)\s*$")
_INLINE_MARK = re.compile(rf"(?:(?<=\s)|^){_MARK}\s+")
# The instruction that often follows the last option on its line ("... D. Qux Answer with the letter ...").
_TRAILING_INSTRUCTION = re.compile(r"\s+(?:please\s+)?(?:answer|respond|reply)\b.*$", flags=re.IGNORECASE)
_LIST_TAIL = re.compile(r"(?:\s*[,;?]|\s+or)+\s*$", flags=re.IGNORECASE)  # "A. Foo, B. Bar, or C. Baz?"
_ANSWER_PREFIX = re.compile(r"^\s*(?:the\s+)?answer(?:\s+is)?\s*:?\s*", flags=re.IGNORECASE)
_LETTER_ONLY = re.compile(r"^(?:\((?P<paren>[A-J])\)|(?P<letter>[A-J]))[.):]?$")
_LETTER_AND_NAME = re.compile(rf"^{_MARK}\s*(?P<text>\S.*?)\.?$")

# Why an answer picks no option (the keys of the readers' counts).
NOT_AN_OPTION_LETTER = "answer's letter is not one of the options"
LETTER_AND_NAME_DISAGREE = "answer's letter and name disagree"
NAMES_NO_OPTION = "answer is neither a letter nor one of the options"
NO_OPTIONS_FOUND = "answer is a letter but the question lists no options in a known layout"


def _mark_letter(match: re.Match) -> str:
    return match.group("paren") or match.group("letter")


def read_options(question: str) -> dict[str, str] | None:
    """``{letter: option}`` of a multiple-choice question in any layout of the module's list, or None."""
    lines = question.splitlines()
    headers = [i for i, line in enumerate(lines) if line.strip().lower() in _HEADERS]
    after_header = lines[headers[-1] + 1:] if headers else lines
    on_lines = _options_on_lines(after_header)
    if on_lines:
        return on_lines
    for line in after_header:
        inline = _options_inline(line)
        if inline:
            return inline
    return None


def _in_letter_order(found: list[tuple[str, str]]) -> dict[str, str] | None:
    """The options when, from the first A on, they are lettered A, B, C, ... with none missing, repeated or
    empty, and at least two; else None (a list read with a gap would silently drop an option)."""
    letters = [letter for letter, _ in found]
    if "A" not in letters:
        return None
    listed = found[letters.index("A"):]
    if len(listed) < 2 or [letter for letter, _ in listed] != list(OPTION_LETTERS[:len(listed)]):
        return None
    if not all(text for _, text in listed):
        return None
    return dict(listed)


def _options_on_lines(lines: list[str]) -> dict[str, str] | None:
    found = [(_mark_letter(m), m.group("text")) for m in map(_OPTION_LINE.match, lines) if m]
    return _in_letter_order(found)


def _options_inline(line: str) -> dict[str, str] | None:
    marks = list(_INLINE_MARK.finditer(line))
    if len(marks) < 2:
        return None
    found = []
    for index, mark in enumerate(marks):
        end = marks[index + 1].start() if index + 1 < len(marks) else len(line)
        text = line[mark.end():end].strip()
        if index + 1 == len(marks):
            text = _TRAILING_INSTRUCTION.sub("", text)
        found.append((_mark_letter(mark), _LIST_TAIL.sub("", text).strip()))
    return _in_letter_order(found)


def answer_letter_of(answer: str) -> str | None:
    """The letter of an answer that is only a letter ("B", "B.", "(B)", "Answer: B"), else None."""
    match = _LETTER_ONLY.match(_ANSWER_PREFIX.sub("", answer.strip()).strip())
    return _mark_letter(match) if match else None


def looks_like_a_choice(answer: str) -> bool:
    """Whether an answer starts with an option mark ("B", "B. Foo", "(B) Foo"): never an open-set name."""
    text = _ANSWER_PREFIX.sub("", answer.strip()).strip()
    return bool(_LETTER_ONLY.match(text) or _LETTER_AND_NAME.match(text))


def picked_option(answer: str, options: dict[str, str]) -> tuple[str | None, str | None]:
    """``(letter, None)`` for the option an answer picks, or ``(None, why)`` (one of the module's reasons)."""
    text = _ANSWER_PREFIX.sub("", answer.strip()).strip()
    letter = answer_letter_of(text)
    if letter is not None:
        return (letter, None) if letter in options else (None, NOT_AN_OPTION_LETTER)
    by_name = [key for key, option in options.items() if normalize_name(option) == normalize_name(text)]
    if by_name and normalize_name(text):
        return by_name[0], None
    match = _LETTER_AND_NAME.match(text)
    if match:
        letter = _mark_letter(match)
        if letter not in options:
            return None, NOT_AN_OPTION_LETTER
        if normalize_name(match.group("text")) != normalize_name(options[letter]):
            return None, LETTER_AND_NAME_DISAGREE
        return letter, None
    return None, NAMES_NO_OPTION


__all__ = [
    "LETTER_AND_NAME_DISAGREE", "NAMES_NO_OPTION", "NOT_AN_OPTION_LETTER", "NO_OPTIONS_FOUND", "OPTION_LETTERS",
    "answer_letter_of", "looks_like_a_choice", "picked_option", "read_options",
]
