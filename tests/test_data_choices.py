"""Multiple-choice questions and answers in the layouts people write, read back into options and a letter.

Stage II data written by others list options with or without a `Choices:` line, as `A. x`, `A) x` or `(A) x`,
on lines or inline, and answer with a letter, `letter. name` or the name. A misread here trains the wrong
thing silently, so every layout is checked, also on FOCI's real category names (which hold dots, slashes,
single capitals and years).
"""

import json
from pathlib import Path

import pytest

from finedefics_data.choices import (
    LETTER_AND_NAME_DISAGREE,
    NAMES_NO_OPTION,
    NOT_AN_OPTION_LETTER,
    looks_like_a_choice,
    picked_option,
    read_options,
)
from finedefics_data.prompts import ObjectNoun, multiple_choice_prompt, multiple_choice_query

OPTIONS = ["Corvane Sprite", "Halden Rook", "Ostra Vela", "Infiniti G Coupe IPL 2012"]
QUERY = "Which of these cars is shown in the image?"
ANSWER_LINE = "Answer with the letter from the given choices directly."
MARKS = {"dot": "{letter}. {option}", "parenthesis": "{letter}) {option}", "enclosed": "({letter}) {option}"}


def marked(style: str, options=OPTIONS) -> list[str]:
    return [MARKS[style].format(letter="ABCDEFGHIJ"[i], option=option) for i, option in enumerate(options)]


def layout(style: str, header: bool, inline: bool, options=OPTIONS) -> str:
    """A question in one of the layouts: options after a Choices: line or not, on lines or on one line."""
    items = marked(style, options)
    listed = " ".join(items) if inline else "\n".join(items)
    if header:
        return f"{QUERY}\nChoices:\n{listed}\n{ANSWER_LINE}"
    return f"{QUERY} {listed} {ANSWER_LINE}" if inline else f"{QUERY}\n{listed}\n{ANSWER_LINE}"


@pytest.mark.parametrize("style", sorted(MARKS))
@pytest.mark.parametrize("header", [True, False], ids=["choices-header", "no-header"])
@pytest.mark.parametrize("inline", [False, True], ids=["on-lines", "inline"])
def test_every_layout_reads_back_its_options(style, header, inline):
    assert read_options(layout(style, header, inline)) == dict(zip("ABCD", OPTIONS))


def test_the_prompt_training_and_evaluation_write_reads_back():
    prompt = multiple_choice_prompt(multiple_choice_query(ObjectNoun.of("car")), OPTIONS)
    assert read_options(prompt) == dict(zip("ABCD", OPTIONS))


@pytest.mark.parametrize("question", [
    "Which car is this?",
    "Is the badge a Type A. model?",  # one stray mark is no list of options
    f"{QUERY}\nA. Corvane Sprite\nB. Halden Rook\nD. Ostra Vela",  # a gap: reading it would drop an option
    f"{QUERY}\nA. Corvane Sprite\nA. Halden Rook",  # a repeated letter
    f"{QUERY}\nB. Corvane Sprite\nC. Halden Rook",  # no A
])
def test_text_that_is_no_complete_list_of_options_reads_as_none(question):
    assert read_options(question) is None


def test_inline_options_separated_by_commas_and_or():
    assert read_options("Which car is it: (A) Corvane Sprite, (B) Halden Rook, or (C) Ostra Vela?") == \
        {"A": "Corvane Sprite", "B": "Halden Rook", "C": "Ostra Vela"}


@pytest.mark.parametrize("answer, letter", [
    ("B", "B"), ("B.", "B"), ("(B)", "B"), ("B)", "B"), ("Answer: B", "B"), ("The answer is B.", "B"),
    ("B. Halden Rook", "B"), ("B) halden rook", "B"), ("(B) Halden Rook.", "B"),
    ("Halden Rook", "B"), ("the halden rook.", "B"), ("A. Corvane Sprite", "A"),
])
def test_answers_pick_the_option_they_name(answer, letter):
    assert picked_option(answer, dict(zip("ABCD", OPTIONS))) == (letter, None)


@pytest.mark.parametrize("answer, problem", [
    ("E", NOT_AN_OPTION_LETTER), ("E. Halden Rook", NOT_AN_OPTION_LETTER),
    ("B. Ostra Vela", LETTER_AND_NAME_DISAGREE), ("Lotus Elise", NAMES_NO_OPTION), ("yes", NAMES_NO_OPTION),
])
def test_answers_that_pick_nothing_say_why(answer, problem):
    assert picked_option(answer, dict(zip("ABCD", OPTIONS))) == (None, problem)


@pytest.mark.parametrize("answer, expected", [("B", True), ("B. Halden Rook", True), ("(C)", True),
                                              ("A Corvane Sprite", False), ("C-47", False), ("F/A-18", False),
                                              ("Halden Rook", False)])
def test_an_option_mark_is_never_read_as_a_name(answer, expected):
    """"A. Corvane Sprite" normalised as a name would lose its "A." as if it were an article."""
    assert looks_like_a_choice(answer) is expected


FOCI_DATA = Path(__file__).resolve().parents[1] / "eval" / "foci_data"


@pytest.mark.parametrize("path", sorted(FOCI_DATA.glob("*.json")), ids=lambda p: p.name.split("-ViT")[0])
def test_foci_option_sets_read_back_in_every_layout(path):
    """FOCI's real option sets (car and aircraft names hold '.', '/', '-', single capitals and years)."""
    data = json.loads(path.read_text())
    examples = [example for examples in data.values() for example in examples[:1]][:60]
    for example in examples:
        options = example["options"]
        for style in MARKS:
            for header in (True, False):
                for inline in (False, True):
                    question = layout(style, header, inline, options)
                    assert read_options(question) == dict(zip("ABCD", options)), question
        right = "ABCD"[options.index(example["groundtruth"])]
        for answer in (right, f"{right}. {example['groundtruth']}", example["groundtruth"]):
            assert picked_option(answer, dict(zip("ABCD", options))) == (right, None)
