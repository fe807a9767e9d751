"""Your own data, end to end: the reference CSV format for both stages, per-stage data in `two-stage`, the
objects' noun from the data to the checkpoint, evaluation and the card, and a starting model for the data.

The data are five invented car models drawn with PIL (`reference_format.py`), in the reference
implementation's format: pretrain.csv (stage I) and finetune.csv (stage II: questions without a category).
"""

import json
import logging
import warnings

import datasets
import pytest
import yaml
from datasets import Dataset
from reference_format import MODELS, RARE, write_reference_dataset

from finedefics_cli import main
from finedefics_training.collator import FinedeficsDataCollator
from finedefics_training.trainer import describe_stage_data

NAMES = set(MODELS)


# ----------------------------------------------------------------------------- stage plans
def test_stage_two_without_any_recognition_question_warns_loudly(caplog):
    rows = Dataset.from_list([{"question": "What colour is the car?", "answer": "red", "category": None,
                               "image": None}] * 3)
    with caplog.at_level(logging.INFO, logger="finedefics_training.trainer"):
        plan = describe_stage_data(rows, stage=2)
    assert plan == {"instruction (as given)": 3}
    assert "STAGE II DATA HOLD NO RECOGNITION QUESTION" in caplog.text
    assert [r.levelname for r in caplog.records if "RECOGNITION" in r.message] == ["WARNING"]


def test_stage_plans_count_every_kind_and_stage_one_refuses_rows_without_a_category(caplog, tmp_path):
    from PIL import Image

    path = tmp_path / "car.png"
    Image.new("RGB", (8, 8), "red").save(path)
    rows = Dataset.from_list([
        {"image": str(path), "category": "Halden Rook", "attribute": "a blue car.", "question": "Describe it.",
         "answer": "a blue car."},  # description
        {"image": str(path), "category": "Halden Rook", "attribute": "", "question": "Which car?",
         "answer": "Halden Rook"},
        {"image": str(path), "category": "Halden Rook", "attribute": "a blue car.", "question": None, "answer": None},
        {"image": None, "category": None, "attribute": "", "question": "Colour?", "answer": "blue"},
    ])
    with caplog.at_level(logging.INFO, logger="finedefics_training.trainer"):
        plan = describe_stage_data(rows, stage=2)
    assert plan == {"recognition (asked by the trainer instead of the description)": 1, "open-set (as given)": 1,
                    "recognition (asked by the trainer: open-set or multiple choice)": 1, "instruction (as given)": 1}
    assert "NO RECOGNITION" not in caplog.text and "stage II will train 4 rows" in caplog.text
    with pytest.raises(ValueError,
                       match=r"stage I training data: rows 3 \(0-based, 1 of 4\) have no image or no category"):
        describe_stage_data(rows, stage=1)
    assert describe_stage_data(rows.select([0, 1, 2]), stage=1) == {
        "description (as given)": 1, "open-set (as given)": 1, "description (asked by the trainer)": 1}


def test_stage_one_refuses_data_without_any_description_when_a_term_needs_them(tmp_path):
    """Plain labelled images (no `attribute` anywhere) cannot feed the object-attribute and attribute-category
    terms: refused up front with the rows named and the two ways out; without those terms they train."""
    from PIL import Image

    from finedefics_training import FinedeficsTrainingConfig

    path = tmp_path / "car.png"
    Image.new("RGB", (8, 8), "red").save(path)
    rows = Dataset.from_list([{"image": str(path), "category": name, "attribute": "", "question": None,
                               "answer": None} for name in ("Halden Rook", "Ostra Vela")])
    described = FinedeficsTrainingConfig(output_dir=str(tmp_path / "a"), stage=1, use_cpu=True, report_to="none")
    assert described.needs_descriptions
    with pytest.raises(ValueError, match=r"none of its 2 rows has an attribute description \(rows 0, 1 have .*"
                                         r"finedefics data describe.*use_attribute_descriptions: false"):
        describe_stage_data(rows, stage=1, needs_descriptions=described.needs_descriptions)
    without = FinedeficsTrainingConfig(output_dir=str(tmp_path / "b"), stage=1, use_cpu=True, report_to="none",
                                       use_attribute_descriptions=False)
    assert not without.needs_descriptions
    assert describe_stage_data(rows, stage=1, needs_descriptions=without.needs_descriptions)
    one = rows.to_list()
    one[1]["attribute"] = "a green car."
    assert describe_stage_data(Dataset.from_list(one), stage=1, needs_descriptions=True)  # one described row is enough


def test_the_training_config_no_longer_warns_about_gradient_checkpointing():
    from finedefics_training.config import FinedeficsTrainingConfig

    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        config = FinedeficsTrainingConfig(output_dir="unused", use_cpu=True)
    assert config.activation_checkpointing is True  # TRL's default, under its current name
    assert FinedeficsTrainingConfig(output_dir="unused", use_cpu=True,
                                    activation_checkpointing=False).activation_checkpointing is False


def test_two_stage_has_its_own_help_listing_config_and_per_stage_data(capsys):
    assert main(["two-stage", "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())  # the help is wrapped to the terminal's width
    assert out.startswith("usage: finedefics two-stage") and "--config RECIPE.yaml" in out
    assert ("--stage1_dataset_dir" in out and "--stage2_dataset_dir" in out
            and "Each stage may have its own data" in out)
    assert main(["train", "--help"]) == 0
    assert capsys.readouterr().out.startswith("usage: finedefics train")


# ----------------------------------------------------------------------------- the whole route
@pytest.fixture(scope="module")
def cars(tmp_path_factory):
    return write_reference_dataset(tmp_path_factory.mktemp("cars") / "cars", train_per_model=6, test_per_model=2)


def test_reference_csvs_go_through_data_init_two_stage_eval_and_push(cars, tmp_path, capsys, monkeypatch):
    asked = []  # (stage, question, answer) of every training example, as the collator builds it
    conversation = FinedeficsDataCollator._conversation

    def recording(self, example, row):
        question, answer = conversation(self, example, row)
        asked.append((self.stage, question, answer))
        return question, answer

    monkeypatch.setattr(FinedeficsDataCollator, "_conversation", recording)
    stage1_data, stage2_data, init = tmp_path / "pretrain-data", tmp_path / "finetune-data", tmp_path / "init"

    # 1. data csv: pretrain.csv -> description rows; finetune.csv -> categories derived from the answers
    assert main(["data", "csv", str(cars / "pretrain.csv"), "--image-root", str(cars / "images"), "--noun", "car",
                 "--output", str(stage1_data)]) == 0
    assert main(["data", "csv", str(cars / "finetune.csv"), "--image-root", str(cars / "images"), "--noun", "car",
                 "--categories", str(cars / "pretrain.csv"), "--output", str(stage2_data)]) == 0
    printed = capsys.readouterr().out
    assert "kept rows by kind: 26 description" in printed
    assert "kept rows by kind: 26 open-set, 26 multiple choice, 6 instruction" in printed

    # 2. init-model: a micro model whose tokenizer knows the data, the noun in its config
    assert main(["init-model", "--preset", "micro", "--corpus", str(stage1_data), "--corpus", str(stage2_data),
                 str(init)]) == 0
    assert json.loads((init / "config.json").read_text())["object_noun"] == "car"

    # 3. two-stage with a dataset per stage
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(dict(
        model_name_or_path=str(init), stage1_dataset_dir=str(stage1_data), output_dir=str(tmp_path / "run"),
        tuning="full", torch_dtype="float32", use_cpu=True, num_negatives=3, max_steps=2, stage2_max_steps=3,
        per_device_train_batch_size=8, learning_rate=1e-3, logging_steps=1, save_strategy="no", report_to="none",
        seed=0, dataloader_num_workers=0, disable_tqdm=True)))
    assert main(["two-stage", "--config", str(recipe), "--stage2_dataset_dir", str(stage2_data)]) == 0
    final = tmp_path / "run" / "stage2" / "final"
    assert json.loads((final / "config.json").read_text())["object_noun"] == "car"
    # Both stages' category names are recorded (`finedefics app` offers them as candidates).
    trained = {name for folder in (stage1_data, stage2_data)
               for name in datasets.load_from_disk(str(folder))["train"]["category"] if name}
    assert len(trained) > 1
    assert json.loads((final / "config.json").read_text())["object_categories"] == sorted(trained)

    stage_one = [(q, a) for stage, q, a in asked if stage == 1]
    stage_two = [(q, a) for stage, q, a in asked if stage == 2]
    assert len(stage_one) >= 2 * 8 and len(stage_two) >= 3 * 8  # steps x batch (the loader may read one batch ahead)
    assert all(q.startswith("Describe the attributes of the car") and a.startswith("a ") for q, a in stage_one)
    recognition = [(q, a) for q, a in stage_two if "colour" not in q]
    assert len(recognition) >= 16  # the stage II batches hold recognition questions ...
    assert all(a in NAMES or a in "ABCD" for _, a in recognition)  # ... answered with a name or a letter
    assert {a in NAMES for _, a in recognition} == {True, False}  # both open-set and multiple choice
    assert any(q.startswith("Which of these cars is shown in the image?") for q, _ in recognition)

    # 4. eval: the checkpoint's noun asks the questions; the training data give the rare slice
    out = tmp_path / "eval"
    assert main(["eval", "--model", str(final), "--benchmark", str(cars / "test"), str(cars / "test_options.json"),
                 "--image-root", str(cars), "--mode", "generate", "open_set", "--train-data", str(stage1_data),
                 "--output-dir", str(out), "--no-progress", "--no-plots", "--bootstrap-samples", "0",
                 "--write-card"]) == 0
    for name in ("test", "test_options"):
        report = json.loads((out / name / "report.json").read_text())
        assert report["protocol"]["query"] == "Which of these cars is shown in the image?"
        assert report["protocol"]["open_set_question"] == "What is the model of the car in the image?"
        assert report["benchmark_info"]["num_rare_categories"] == 1
        slice_ = report["modes"]["generate"]["rare_vs_common"]
        assert (slice_["rare"]["n"], slice_["common"]["n"]) == (2, 8)  # RARE's two test images vs the others
    card = (final / "README.md").read_text()
    assert "What is the model of the car in the image?" in card and "Albatross" not in card
    assert "# Finedefics: fine-grained car recognition" in card

    # 5. push --stage-only: the staged card speaks of cars too
    staged = tmp_path / "staged"
    assert main(["push", str(final), "--repo-id", "me/finedefics-cars", "--report", str(out), "--stage-only",
                 str(staged)]) == 0
    staged_card = (staged / "README.md").read_text()
    assert "# finedefics-cars" in staged_card and "the car in the image" in staged_card
    assert RARE in staged_card or "Corvane Sprite" in staged_card  # example labels from the evaluated benchmark


def test_eval_noun_override_and_rare_categories_from_training_counts(cars, tmp_path):
    from finedefics_data.prompts import ObjectNoun
    from finedefics_eval.benchmarks import load_benchmark, rare_by_counts

    assert rare_by_counts({"a": 10, "b": 9, "c": 3, "d": 5}) == {"c"}  # <= half the median (7)
    bench = load_benchmark(str(cars / "test_options.json"), image_root=cars, noun=ObjectNoun.of("coupe"))
    assert bench.query == "Which of these coupes is shown in the image?" and bench.rare_categories is None
    with_counts = load_benchmark(str(cars / "test_options.json"), image_root=cars, train_data=cars / "test")
    assert with_counts.rare_categories == frozenset()  # the test split is balanced: nothing is rare
    foci = load_benchmark("aircraft-102", image_root=tmp_path, noun=ObjectNoun.of("coupe"))
    assert foci.query == "Which of these aircrafts is shown in the image?"  # FOCI keeps its own question
