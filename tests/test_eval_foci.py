"""The FOCI protocol: shipped option files, seeded option order, the prompt byte for byte, the answer
rule, prediction files (FOCI's own included), and clear errors on bad option files."""

import hashlib
import json
from collections import Counter

import pytest
from conftest import FOCI_RESULT_NAMES, foci_result_file

from finedefics_eval.foci import (
    FOCI_DATASETS,
    foci_metrics,
    foci_option_path,
    foci_prompt,
    foci_query,
    load_option_file,
    names_match,
    normalize_name,
    parse_letter,
    prediction_record,
    read_prediction_file,
    shuffled_options,
    write_prediction_file,
)

# FOCI's README table: labels and examples per option file.
FOCI_SIZES = {"aircraft-102": (100, 3333), "bird-200": (200, 5794), "car-196": (196, 8041),
              "dog-120": (120, 8580), "flower-102": (102, 6149), "pet-37": (37, 3669)}
# sha256 of FOCI's released option files (bird-200 and dog-120 as the Finedefics release extended them):
# the shipped copies must be those files byte for byte.
FOCI_SHA256 = {
    "aircraft-102": "872a31687310b08150fbbac2ea96f5e788bb20af81e460e28957ecca5ad72907",
    "bird-200": "56219514808d0f3e91d876072c00c5b046b053ba566ad3abad7e9381211c4f01",
    "car-196": "28e23c05cb277c044343c5aeb3bd92881d334f327f1f146a4926359ac971cd6c",
    "dog-120": "00c69027ea2fc06e653552d29af10ea1780619a246cb58661e3cd586e4752ae8",
    "flower-102": "94da4227f4ada72c03c920478d87278cab0e18a49ba0cf06ebcf9c2063e1abbb",
    "pet-37": "74d57ceb84b734bee7312b762ab0edebbd4d3d041b45345e10fa27309a00f62f",
}


def test_prompt_is_focis_text_byte_for_byte():
    prompt = foci_prompt(foci_query("dog-120"), ["toy_terrier", "Chihuahua", "Mexican_hairless", "miniature_pinscher"])
    assert prompt.encode("utf-8") == (
        b"Which of these dogs is shown in the image?\nChoices:\n"
        b"A. toy_terrier\nB. Chihuahua\nC. Mexican_hairless\nD. miniature_pinscher\n"
        b"Answer with the letter from the given choices directly."
    )


def test_prompt_keeps_labels_outside_ascii():
    prompt = foci_prompt("Which of these birds is shown in the image?", ["Café Crème Warbler", "Æsop Tit", "B", "C"])
    assert "A. Café Crème Warbler\nB. Æsop Tit\n" in prompt


@pytest.mark.parametrize("answer, letter", [
    ("D", "D"), ("d.", "D"), ("Answer: B", "B"), ("B. Chihuahua is a small dog", "B"), ("  c\n", "C"),
    ("", None), ("E", None), ("The answer is C", None),
    # FOCI reads the first character only: a bare "Answer:" (no space to strip) counts as A.
    ("Answer:", "A"),
])
def test_letter_parser_follows_focis_rule(answer, letter):
    assert parse_letter(answer) == letter


@pytest.mark.parametrize("name", list(FOCI_DATASETS))
def test_shipped_option_files_match_focis_and_put_the_ground_truth_first(name):
    path = foci_option_path(name)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == FOCI_SHA256[name], path
    examples = load_option_file(path)
    assert (len({e.groundtruth for e in examples}), len(examples)) == FOCI_SIZES[name]
    assert all(e.options[0] == e.groundtruth and len(set(e.options)) == 4 for e in examples)


def test_option_order_is_seeded_reproducible_and_balanced():
    examples = load_option_file(foci_option_path("bird-200"))
    first = [shuffled_options(e.options, 0, e.example_id) for e in examples]
    assert first == [shuffled_options(e.options, 0, e.example_id) for e in examples]
    # The order of one example does not depend on the others (subsets, batch sizes, example order).
    assert [shuffled_options(e.options, 0, e.example_id) for e in reversed(examples[:50])] == first[:50][::-1]
    other_seed = [shuffled_options(e.options, 1, e.example_id) for e in examples]
    assert sum(a != b for a, b in zip(first, other_seed)) > 0.7 * len(examples)
    assert all(sorted(order) == sorted(e.options) for order, e in zip(first, examples))
    letters = Counter("ABCD"[order.index(e.groundtruth)] for order, e in zip(first, examples))
    assert all(0.22 < letters[letter] / len(examples) < 0.28 for letter in "ABCD"), letters


def test_dog_120s_repeated_image_keeps_two_examples_with_their_own_ids():
    examples = load_option_file(foci_option_path("dog-120"))
    repeated = [e for e in examples if e.image == "images/n02085620-Chihuahua/n02085620_1235.jpg"]
    assert len(repeated) == 2 and repeated[0].example_id != repeated[1].example_id
    assert repeated[0].options != repeated[1].options


def write_json(path, data):
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    return path


def test_ground_truth_missing_from_options_names_file_label_example_and_field(tmp_path):
    path = write_json(tmp_path / "bad.json", {"Corvel Tit": [
        {"image": "a.png", "options": ["Corvel Tit", "B", "C", "D"], "groundtruth": "Corvel Tit"},
        {"image": "b.png", "options": ["Mirel Finch", "B", "C", "D"], "groundtruth": "Corvel Tit"},
    ]})
    with pytest.raises(ValueError, match=r"bad\.json: label 'Corvel Tit', example 1: field 'groundtruth' 'Corvel Tit' "
                                         r"is not among the options"):
        load_option_file(path)


@pytest.mark.parametrize("row, message", [
    ({"image": "a.png", "options": ["A", "B", "C"], "groundtruth": "A"}, "has 3 labels, expected 4"),
    ({"image": "a.png", "options": ["A", "B", "B", "C"], "groundtruth": "A"}, "repeats a label"),
    ({"options": ["A", "B", "C", "D"], "groundtruth": "A"}, "field 'image' is missing"),
    ({"image": "a.png", "options": ["A", "B", "C", ""], "groundtruth": "A"}, "list of non-empty labels"),
])
def test_malformed_option_rows_are_clear_errors(tmp_path, row, message):
    with pytest.raises(ValueError, match=message):
        load_option_file(write_json(tmp_path / "bad.json", {"A": [row]}))


def test_empty_missing_and_invalid_option_files_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="holds no examples"):
        load_option_file(write_json(tmp_path / "empty.json", {}))
    with pytest.raises(FileNotFoundError, match="option file not found"):
        load_option_file(tmp_path / "missing.json")
    (tmp_path / "broken.json").write_text("{", encoding="utf-8")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_option_file(tmp_path / "broken.json")


def test_labels_outside_ascii_load_and_round_trip_through_prediction_files(tmp_path):
    labels = ["Café Crème Warbler", "Æsop Tit", "Straße Finch", "鳥 Reedhopper"]
    path = write_json(tmp_path / "options.json", {labels[0]: [{"image": "é.png", "options": labels,
                                                               "groundtruth": labels[0]}]})
    (example,) = load_option_file(path)
    assert example.groundtruth == "Café Crème Warbler"
    record = prediction_record(example.image, labels[::-1], example.groundtruth, "D", "D")
    saved = write_prediction_file(tmp_path / "predictions.json", [record], {"dataset": "toy"})
    assert "Café Crème Warbler" in saved.read_text(encoding="utf-8")  # stored as UTF-8, not \\u escapes
    run = read_prediction_file(saved)
    assert run.predictions == [record] and run.metrics == {"generation_failures": 0.0, "accuracy": 1.0}


def test_failed_answers_are_stored_as_focis_na_records():
    record = prediction_record("x.png", ["A1", "B1", "C1", "D1"], "C1", "The answer is C", None)
    assert record["predicted"] == "NA ### The answer is C"
    good = prediction_record("y.png", ["A1", "B1", "C1", "D1"], "C1", "C", "C")
    assert foci_metrics([record, good]) == {"generation_failures": 0.5, "accuracy": 0.5}


@pytest.mark.parametrize("name", FOCI_RESULT_NAMES)
def test_focis_own_prediction_files_reproduce_their_stored_metrics(name):
    path = foci_result_file(name)
    run = read_prediction_file(path)
    stored = json.loads(path.read_text(encoding="utf-8"))["metrics"]
    assert foci_metrics(run.predictions) == pytest.approx(stored, abs=1e-12)
    assert len(run.predictions) == FOCI_SIZES[run.config["dataset"]][1]


def test_prediction_file_with_a_bad_record_names_it(tmp_path):
    path = write_json(tmp_path / "run.json", {"metrics": {}, "predictions": [
        {"image": "a", "predicted": "A", "correct": "Z", "options": ["A", "B", "C", "D"]}]})
    with pytest.raises(ValueError, match=r"run\.json: prediction 0: field 'correct' 'Z' is not among the options"):
        read_prediction_file(path)


@pytest.mark.parametrize("answer, label, match", [
    ("Black-footed albatross.", "Black_footed_Albatross", True),
    ("the Black Footed Albatross", "Black_footed_Albatross", True),
    ("café crème warbler", "Café_Crème Warbler", True),
    ("Laysan Albatross", "Black_footed_Albatross", False),
    ("Albatross", "Black_footed_Albatross", False),
    ("", "Black_footed_Albatross", False),
])
def test_open_set_names_match_after_normalisation(answer, label, match):
    assert names_match(answer, label) is match


def test_normalised_names_drop_case_underscores_punctuation_and_articles():
    assert normalize_name("An  Ovenbird!") == "ovenbird"
    assert normalize_name("Straße_Finch") == "strasse finch"
