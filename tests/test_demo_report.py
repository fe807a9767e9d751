"""The demo's numbers: premise recall, the paired gap over seeds and its interval, mean tables, base data."""

import json

import pytest

from finedefics_data.prompts import ObjectNoun, multiple_choice_options
from finedefics_training.demo import report as demo_report
from finedefics_training.demo.base import category_descriptions, knowledge_rows
from finedefics_training.demo.premise import description_words, recall


def _scores(correct: dict[str, list[int]], rare: list[bool]) -> dict:
    return {name: {"correct": {mode: [bool(c) for c in values] for mode in demo_report.GAP_MODES},
                   "rare_rows": rare} for name, values in correct.items()}


def test_recall_counts_visible_values_and_restricts_to_given_keys():
    truths = [{"beak": "long", "tail": "forked", "eye": "dark"}, {"beak": "short", "tail": "fanned"}]
    stated = [{"beak": "long", "tail": "pointed", "eye": "dark"}, {"beak": "short"}]
    result = recall(stated, truths)
    assert result["recall"] == pytest.approx(3 / 5) and result["values"] == 5
    assert result["per_attribute"] == {"beak": 1.0, "eye": 1.0, "tail": 0.0}
    # Distinguishing keys: the eye of the second image is hidden (absent from its truth) and is not counted.
    only = recall(stated, truths, keys=[["tail"], ["tail", "eye"]])
    assert only["recall"] == 0.0 and only["values"] == 2


def test_description_words_drop_function_words():
    words = ("slender", "long", "thin", "beak")
    assert description_words("A slender bird with a long thin beak.") == {w: w for w in words}


def test_paired_gap_mean_per_seed_and_interval():
    rare = [False] * 6 + [True] * 4
    scores = {
        0: _scores({"finedefics": [1, 1, 1, 1, 0, 0, 1, 1, 0, 0], "instruction_tuning": [1, 1, 0, 0, 0, 0, 0, 0, 0, 0],
                    "no_hard_negatives": [1] * 10}, rare),
        1: _scores({"finedefics": [1, 1, 1, 0, 0, 0, 1, 0, 0, 0], "instruction_tuning": [1, 1, 1, 0, 0, 0, 0, 0, 0, 0],
                    "no_hard_negatives": [0] * 10}, rare),
    }
    gap = demo_report.paired_gap(scores, "finedefics", "instruction_tuning", "generate")
    assert gap["per_seed"] == pytest.approx([0.4, 0.1]) and gap["mean"] == pytest.approx(0.25)
    assert gap["ci95"][0] <= gap["mean"] <= gap["ci95"][1] and gap["n"] == 10
    rare_gap = demo_report.paired_gap(scores, "finedefics", "instruction_tuning", "generate", rows=rare)
    assert rare_gap["per_seed"] == pytest.approx([0.5, 0.25]) and rare_gap["n"] == 4
    table = demo_report.gaps(scores)
    assert table["finedefics - instruction_tuning, generate, rare"]["mean"] == pytest.approx(0.375)
    # Ablations are compared with Finedefics (before the variant registry: no_hard_negatives - instruction_tuning).
    assert table["finedefics - no_hard_negatives, embedding"]["per_seed"] == pytest.approx([-0.4, 0.4])
    assert table["finedefics - no_hard_negatives, embedding"]["protocol"] == "same schedule"
    assert table["finedefics - instruction_tuning, open_set, rare"]["mean"] == pytest.approx(0.375)


def test_identical_models_have_a_zero_gap_and_a_zero_width_interval():
    same = [1, 0, 1, 1, 0]
    scores = {0: _scores({"finedefics": same, "instruction_tuning": same, "no_hard_negatives": same}, [False] * 5)}
    gap = demo_report.paired_gap(scores, "finedefics", "instruction_tuning", "likelihood")
    assert gap["mean"] == 0 and gap["ci95"] == [0, 0]


def test_mean_rows_average_over_seeds_with_spread():
    per_seed = {0: [{"model": "m", "generate": 0.5, "generate_rare": 0.2}],
                1: [{"model": "m", "generate": 0.7, "generate_rare": 0.4}]}
    (row,) = demo_report.mean_rows(per_seed)
    assert row["generate"] == pytest.approx(0.6) and row["generate_std"] == pytest.approx(0.1414, abs=1e-3)
    assert "60.0 ± 14.1" in demo_report.markdown_table([row], with_std=True)


def test_premise_summary_checks_the_targets():
    premise = {"split": "validation",
               "object_information_extraction": {"recall": 0.93, "distinguishing": {"recall": 0.79}, "images": 10,
                                                 "scored_by": "attribute parser", "per_attribute": {"beak": 0.9}},
               "category_knowledge": {"recall": 1.0, "rare": {"recall": 0.95}}}
    summary = demo_report.premise_summary(premise, {"modes": {"generate": {"accuracy": 0.3}}})
    assert summary["met"] == {"object values": True, "distinguishing values": False, "category knowledge": True}
    text = "\n".join(demo_report.premise_lines(premise, summary))
    assert "79.0%" in text and "NOT met" in text and "beak 90%" in text


def test_category_descriptions_prefer_canonical_then_most_common():
    rows = {"category": ["a", "a", "a", "b"], "attribute": ["red", "blue", "blue", "green"]}
    assert category_descriptions(rows) == {"a": "blue", "b": "green"}
    assert category_descriptions(rows, [{"name": "a", "description": "canonical"}])["a"] == "canonical"


def test_knowledge_rows_ask_both_ways_and_as_a_multiple_choice_with_the_shared_prompts():
    descriptions = {"Alpine A110": "A small blue coupe.", "Lotus Elise": "A small red roadster.",
                    "Lotus Exige": "A small red coupe."}
    negatives = {"Alpine A110": ["Lotus Exige", "Lotus Elise"]}
    rows = knowledge_rows(descriptions, ObjectNoun.of("car"), repeats=2, negatives=negatives)
    alpine = [row for row in rows if row["category"] == "Alpine A110"]
    assert len(rows) == 2 * 3 * 2 + 2 and len(alpine) == 6
    assert alpine[0] == {"category": "Alpine A110", "question": "What does an Alpine A110 look like?",
                         "answer": "A small blue coupe."}
    assert alpine[1]["question"] == "Which car is a small blue coupe?" and alpine[1]["answer"] == "Alpine A110"
    choice = alpine[2]
    options = multiple_choice_options(choice["question"])
    assert choice["question"].startswith("Which car is a small blue coupe?\nChoices:\n")
    assert sorted(options.values()) == ["Alpine A110", "Lotus Elise", "Lotus Exige"]
    assert options[choice["answer"]] == "Alpine A110"
    json.dumps(rows)


def test_description_choices_have_one_true_caption_and_lookalikes():
    from finedefics_data.synth import SynthConfig, parse_description
    from finedefics_training.demo.base import attribute_pool, description_choice_rows

    pool = attribute_pool(20, SynthConfig())
    rows = description_choice_rows(pool, ObjectNoun.of("bird"))
    letters = set()
    for (image, question, letter), truth in zip(rows, pool.attributes):
        options = multiple_choice_options(question)
        assert question.startswith("Which description matches the bird in the image?") and len(options) == 4
        assert parse_description(options[letter]) == truth
        for other in set(options) - {letter}:
            differing = [k for k in truth if parse_description(options[other]).get(k) != truth[k]]
            assert len(differing) == 1  # one part away, as a sibling species
        letters.add(letter)
    assert len(letters) > 1


def _categories():
    names = ["Ashwing", "Bellowtail", "Cindercrest", "Dunmere", "Emberfinch"]
    return [{"name": name, "description": f"A bird with a {name.lower()} mark."} for name in names], \
        {name: [other for other in names if other != name][:3] for name in names}


@pytest.mark.parametrize("responder, expected", [("oracle", 1.0), ("always A", 0.25), ("not a letter", 0.0)])
def test_multiple_choice_in_text_puts_the_answer_at_every_letter(monkeypatch, responder, expected):
    """Each category is asked with its name at each of the 4 positions: a letter prior scores exactly chance."""
    from finedefics_training.demo import premise

    categories, negatives = _categories()
    by_description = {c["description"].rstrip(".").lower()[2:]: c["name"] for c in categories}

    def answer(question: str) -> str:
        if responder == "always A":
            return "A"
        if responder == "not a letter":
            return "Ashwing"
        options = multiple_choice_options(question)
        name = next(n for d, n in by_description.items() if d in question.lower())
        return next(letter for letter, option in options.items() if option == name)

    monkeypatch.setattr(premise, "generate_answers",
                        lambda model, processor, questions, *a, **k: [answer(q) for q in questions])
    result = premise.multiple_choice_in_text(None, None, categories, negatives, ObjectNoun.of("bird"),
                                             rare={"Dunmere"})
    assert result["questions"] == 5 * 4
    assert result["accuracy"] == pytest.approx(expected)
    if responder == "always A":
        assert result["answered_letters"] == {"A": 20} and result["rare_accuracy"] == pytest.approx(0.25)


def test_multiple_choice_in_text_named_asks_for_the_category_by_name(monkeypatch):
    """The named form asks "Which of these is <name>?" at every letter: copying the asked name finds the letter."""
    from finedefics_training.demo import premise

    categories, negatives = _categories()
    asked = []

    def copy_the_name(question: str) -> str:
        name = question.split("Which of these is ")[1].split("?")[0]
        asked.append(name)
        return next(letter for letter, option in multiple_choice_options(question).items() if option == name)

    monkeypatch.setattr(premise, "generate_answers",
                        lambda model, processor, questions, *a, **k: [copy_the_name(q) for q in questions])
    result = premise.multiple_choice_in_text(None, None, categories, negatives, ObjectNoun.of("bird"),
                                             rare={"Dunmere"}, named=True)
    assert result["questions"] == 5 * 4 and result["accuracy"] == 1.0
    assert sorted(set(asked)) == sorted(c["name"] for c in categories)
