"""The FOCI protocol: option files, seeded option order, the prompt, the answer rule, prediction files.

FOCI (Geigle et al., 2024) scores fine-grained recognition as 4-way multiple choice. Each example of
an option file lists the ground truth first and three labels a CLIP model finds similar; the
options are shown in a shuffled order, lettered A-D, and a generated answer counts when it starts
with the right letter. This module reproduces FOCI's prompt and answer rule byte for byte, with one
deliberate change: FOCI shuffles with an unseeded RNG, here the order is a function of
``(seed, example id)``, so every run, batch size and subset shows each example the same way.

    examples = load_option_file(foci_option_path("bird-200"))
    order = shuffled_options(examples[0].options, seed=0, key=examples[0].example_id)
    prompt = foci_prompt(foci_query("bird-200"), order)
    letter = parse_letter(" Answer: B")            # "B"; None is a generation failure
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from finedefics_data.names import names_match, normalize_name
from finedefics_data.prompts import CHOICE_LETTERS, ObjectNoun, multiple_choice_prompt, multiple_choice_query
from finedefics_data.schema import OUTSIDE_ROOT_PROBLEM, escapes_image_root, read_json_file

# FOCI marks an unparseable answer by this prefix in a prediction file's "predicted" field.
FAILURE_PREFIX = "NA ### "
OPTION_FILE_SUFFIX = "-ViT-L-14-laion2b_s32b_b82k-4.json"


@dataclass(frozen=True)
class FociDataset:
    """One of FOCI's fine-grained datasets: how the prompt names its objects and how the Hub names it."""

    name: str
    plural: str  # FOCI's query noun
    singular: str  # for the open-set question
    display_name: str
    dataset_type: str  # identifier used in model-index entries

    @property
    def noun(self) -> ObjectNoun:
        return ObjectNoun(self.singular, self.plural)


FOCI_DATASETS = {
    d.name: d
    for d in (
        FociDataset("aircraft-102", "aircrafts", "aircraft", "FGVC-Aircraft", "fgvc_aircraft"),
        FociDataset("bird-200", "birds", "bird", "CUB-200-2011", "cub_200_2011"),
        FociDataset("car-196", "cars", "car", "Stanford Cars", "stanford_cars"),
        FociDataset("dog-120", "dogs", "dog", "Stanford Dogs", "stanford_dogs"),
        FociDataset("flower-102", "flowers", "flower", "Oxford 102 Flowers", "oxford_flowers102"),
        FociDataset("pet-37", "pets", "pet", "Oxford-IIIT Pet", "oxford_iiit_pet"),
    )
}


@dataclass
class OptionExample:
    """One multiple-choice example: ``options[0]`` is the ground truth, as in FOCI's option files."""

    example_id: str
    image: str
    groundtruth: str
    options: list[str]
    extra: dict = field(default_factory=dict)


# ----------------------------------------------------------------------------- option files
def foci_option_path(name: str) -> Path:
    """The option file of FOCI dataset ``name`` shipped with this package (``finedefics_eval/foci_data``)."""
    if name not in FOCI_DATASETS:
        raise ValueError(f"unknown FOCI dataset {name!r}; choose one of {', '.join(FOCI_DATASETS)}")
    return Path(str(resources.files(__package__).joinpath("foci_data", name + OPTION_FILE_SUFFIX)))


def foci_query(name_or_noun: str) -> str:
    """FOCI's question, e.g. "Which of these birds is shown in the image?" (a FOCI name or a plural noun)."""
    dataset = FOCI_DATASETS.get(name_or_noun)
    return multiple_choice_query(dataset.noun if dataset else ObjectNoun(name_or_noun, name_or_noun))


def load_option_file(path: str | Path, num_options: int = len(CHOICE_LETTERS),
                     allow_images_outside_root: bool = False) -> list[OptionExample]:
    """Read a FOCI option file (``{label: [{"image", "options", "groundtruth"}, ...]}``), checked.

    Examples keep the file's order; ``example_id`` is the position in that order (FOCI's dog-120
    lists one image twice with different options, so the image path alone is not an id). Image
    paths are relative to an image root and must stay inside it (see :func:`escapes_image_root`)
    unless ``allow_images_outside_root``.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: naming the file, label, example and field, when the JSON is not FOCI's layout,
            the ground truth is not among the options, the options are duplicated, their number
            is not ``num_options``, or an image path leaves the image root.
    """
    path = Path(path)
    data = read_json_file(path, "FOCI option file")
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object mapping each label to its examples")
    examples = []
    for label, rows in data.items():
        if not isinstance(rows, list):
            raise ValueError(f"{path}: label {label!r} must map to a list of examples")
        for index, row in enumerate(rows):
            where = f"{path}: label {label!r}, example {index}"
            examples.append(_checked_option_row(row, where, str(len(examples)), num_options))
            if not allow_images_outside_root and escapes_image_root(row["image"]):
                raise ValueError(f"{where}: field 'image' {row['image']!r} {OUTSIDE_ROOT_PROBLEM}")
    if not examples:
        raise ValueError(f"{path} holds no examples")
    return examples


def _checked_option_row(row, where: str, example_id: str, num_options: int) -> OptionExample:
    if not isinstance(row, dict):
        raise ValueError(f"{where}: expected an object with image, options and groundtruth")
    for key in ("image", "options", "groundtruth"):
        if key not in row:
            raise ValueError(f"{where}: field {key!r} is missing")
    image, options, truth = row["image"], row["options"], row["groundtruth"]
    if not isinstance(image, str) or not image:
        raise ValueError(f"{where}: field 'image' must be a non-empty path, got {image!r}")
    check_options(options, truth, where, num_options)
    # FOCI's runner reads the ground truth from options[0]; put it there whatever the file's order.
    ordered = [truth] + [option for option in options if option != truth]
    return OptionExample(example_id=example_id, image=image, groundtruth=truth, options=ordered)


def check_options(options, truth, where: str, num_options: int = len(CHOICE_LETTERS)) -> None:
    """Raise a ValueError naming ``where`` unless ``options`` are ``num_options`` distinct labels holding ``truth``."""
    if not isinstance(truth, str) or not truth.strip():
        raise ValueError(f"{where}: field 'groundtruth' must be a non-empty label, got {truth!r}")
    if not isinstance(options, list) or not all(isinstance(o, str) and o.strip() for o in options):
        raise ValueError(f"{where}: field 'options' must be a list of non-empty labels, got {options!r}")
    if len(options) != num_options:
        raise ValueError(f"{where}: field 'options' has {len(options)} labels, expected {num_options}")
    if len(set(options)) != len(options):
        raise ValueError(f"{where}: field 'options' repeats a label: {options}")
    if truth not in options:
        raise ValueError(f"{where}: field 'groundtruth' {truth!r} is not among the options {options}")


# ----------------------------------------------------------------------------- prompt
def shuffled_options(options: list[str], seed: int, key: str) -> list[str]:
    """The options in the order shown to the model: a permutation fixed by ``(seed, key)``.

    ``key`` identifies the example (its ``example_id``), so the order does not depend on batch size,
    example order or which other examples are evaluated.
    """
    order = list(options)
    random.Random(f"foci:{seed}:{key}").shuffle(order)
    return order


def foci_prompt(query: str, options: list[str], letters: str = CHOICE_LETTERS) -> str:
    """FOCI's multiple-choice prompt for ``options`` in the order given (built by ``prompts``, as in training)."""
    return multiple_choice_prompt(query, options, letters)


# ----------------------------------------------------------------------------- answer rule
def clean_answer(answer: str) -> str:
    """FOCI's post-processing of an Idefics2 answer: strip whitespace, remove "Answer: " (anywhere)."""
    return answer.strip().replace("Answer: ", "")


def parse_letter(answer: str, letters: str = CHOICE_LETTERS) -> str | None:
    """The chosen letter under FOCI's rule, or None for a generation failure.

    The cleaned answer must start with one of ``letters`` (case-insensitive): "D", "d.", "Answer: B"
    and "B. Chihuahua is ..." parse; "", "E" and "The answer is C" are failures, exactly as in FOCI.
    Its rule reads the first character only: a sentence is never searched for a letter, and an
    answer that merely begins with a/b/c/d ("Answer:" without a space, "a Chihuahua") counts as
    that letter. Kept as is, so numbers stay comparable with FOCI's.
    """
    cleaned = clean_answer(answer).lower()
    for letter in letters:
        if cleaned.startswith(letter.lower()):
            return letter
    return None


# ----------------------------------------------------------------------------- prediction files
def prediction_record(image: str, shown_options: list[str], groundtruth: str, raw: str,
                      letter: str | None) -> dict:
    """One entry of a FOCI prediction file; an unparsed answer becomes ``"NA ### <raw>"`` as in FOCI."""
    if letter is None:
        predicted = FAILURE_PREFIX + raw
    else:
        predicted = shown_options[CHOICE_LETTERS.index(letter)]
    return {"image": image, "predicted": predicted, "predicted_raw": raw, "correct": groundtruth,
            "options": list(shown_options)}


def is_failure(record: dict) -> bool:
    """Whether a prediction record is a generation failure (FOCI writes those as "NA ### ...")."""
    return record["predicted"] not in record["options"]


def foci_metrics(records: list[dict]) -> dict:
    """FOCI's ``metrics`` block: accuracy and generation-failure share over all records."""
    if not records:
        raise ValueError("no predictions to score")
    correct = sum(record["predicted"] == record["correct"] for record in records)
    failures = sum(is_failure(record) for record in records)
    return {"generation_failures": failures / len(records), "accuracy": correct / len(records)}


def write_prediction_file(path: str | Path, records: list[dict], config: dict) -> Path:
    """Write ``{"metrics", "predictions", "config"}`` as FOCI's runner does (UTF-8, labels unescaped)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    output = {"metrics": foci_metrics(records), "predictions": records, "config": config}
    path.write_text(json.dumps(output, indent=4, ensure_ascii=False), encoding="utf-8")
    return path


@dataclass
class PredictionFile:
    """A FOCI prediction file as read back: stored metrics, checked records and the run's config."""

    path: Path
    metrics: dict
    predictions: list[dict]
    config: dict


def read_prediction_file(path: str | Path) -> PredictionFile:
    """Read a FOCI prediction file (FOCI's own or one written here), checking every record.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: naming the file, record and field, when a record lacks a field or names a
            ground truth that is not among its options.
    """
    path = Path(path)
    data = read_json_file(path, "FOCI prediction file")
    if not isinstance(data, dict) or not isinstance(data.get("predictions"), list):
        raise ValueError(f"{path}: expected an object with a 'predictions' list (FOCI's prediction format)")
    records = data["predictions"]
    if not records:
        raise ValueError(f"{path} holds no predictions")
    for index, record in enumerate(records):
        where = f"{path}: prediction {index}"
        for key in ("image", "predicted", "correct", "options"):
            if key not in record:
                raise ValueError(f"{where}: field {key!r} is missing")
        if record["correct"] not in record["options"]:
            raise ValueError(f"{where}: field 'correct' {record['correct']!r} is not among the options "
                             f"{record['options']}")
    return PredictionFile(path=path, metrics=dict(data.get("metrics") or {}), predictions=records,
                          config=dict(data.get("config") or {}))


__all__ = [
    "CHOICE_LETTERS", "FOCI_DATASETS", "FociDataset", "OptionExample", "PredictionFile",
    "check_options", "clean_answer", "escapes_image_root", "foci_metrics", "foci_option_path", "foci_prompt",
    "foci_query",
    "is_failure", "load_option_file", "names_match", "normalize_name", "parse_letter", "prediction_record",
    "read_prediction_file", "shuffled_options", "write_prediction_file",
]
