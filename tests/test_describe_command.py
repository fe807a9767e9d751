"""`finedefics data describe`: a labelled image folder becomes a training dataset with model-made attribute
descriptions, batched (padding-correct) and resumable from the on-disk answer cache.

Models: the shipped demo base (this package's own Idefics2-family checkpoint), tiny random stock Idefics2,
Qwen2-VL and SmolVLM models through the transformers Auto classes, and a tiny random Llama for the attribute
list and the summaries.
"""

import json

import numpy as np
import pytest
import torch
from datasets import load_from_disk
from describe_helpers import (
    DEMO_BASE,
    ISSUE_ATTRIBUTES,
    VEHICLES,
    save_stock_family,
    save_stock_idefics2,
    save_tiny_causal_lm,
    write_image_folder,
)
from PIL import Image

from finedefics_cli import main
from finedefics_data.describe import load_prompt, one_sentence, template_summary
from finedefics_data.describe_run import DescribeSettings, describe_folder, mine_siblings
from finedefics_data.prompts import ObjectNoun


@pytest.fixture(autouse=True)
def one_thread():
    torch.set_num_threads(1)  # the test machine's cores are shared


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    teach = {load_prompt("attribute_list").format(super_category="vehicles"): "\nbody colour\nwheels\nroof",
             load_prompt("summary").format(noun="vehicle", pairs="body colour: red"): " a vehicle with a red body."}
    return {"idefics2": save_stock_idefics2(root / "idefics2"),
            "causal_lm": save_tiny_causal_lm(root / "llama", teach)}


def dataset_rows(folder):
    """Every split's rows, images as raw bytes (so two outputs compare exactly)."""
    import datasets

    loaded = load_from_disk(str(folder))
    return {split: table.cast_column("image", datasets.Image(decode=False)).to_list()
            for split, table in loaded.items()}


# ----------------------------------------------------------------------------- the issue's example
def test_issue_example_on_the_demo_base_then_refused_then_resumed_from_the_cache(tmp_path, capsys):
    images = write_image_folder(tmp_path / "my_images", per_split={"train": 2, "test": 1})  # 3 categories
    output = tmp_path / "described"
    command = ["data", "describe", str(images), "--vqa-model", str(DEMO_BASE), "--attributes", ISSUE_ATTRIBUTES,
               "--noun", "vehicle", "--output", str(output), "--no-progress"]
    assert main(command) == 0
    printed = capsys.readouterr().out
    assert "described 9 of 9 images (3 categories)" in printed

    report = json.loads((output / "describe_report.json").read_text())
    assert report["images"] == 9 and report["splits"] == {"test": 3, "train": 6}
    assert report["skipped_images"]["count"] == 0
    assert report["attributes"] == ISSUE_ATTRIBUTES.split(",")
    assert report["answers"] == {"total": 45, "from_cache": 0, "computed": 45}
    assert report["models"]["vqa"]["revision"].startswith("local-")
    assert report["models"]["summary"]["name"] == "template"
    assert set(report["attribute_answers"]) == set(ISSUE_ATTRIBUTES.split(","))
    assert all(rate["asked"] == 9 for rate in report["attribute_answers"].values())
    assert report["seconds"] > 0 and report["images_per_second"] > 0

    # What training reads: the description columns, each row's negatives are the two other categories
    from finedefics_training.recipe import DataArguments, load_training_dataset

    train = load_training_dataset(DataArguments(dataset_dir=str(output)))
    assert len(train) == 6 and set(train["category"]) == set(VEHICLES)
    answers = [json.loads(line) for line in (output / "describe_answers.jsonl").read_text().splitlines()]
    assert len(answers) == 9
    for row, record in zip(train, [a for a in answers if a["split"] == "train"]):
        assert record["category"] == row["category"] and set(record["answers"]) == set(ISSUE_ATTRIBUTES.split(","))
        values = json.loads(row["attributes"])
        if values:
            assert row["attribute"] == template_summary(values, "vehicle")
        assert sorted(row["neg_categories"]) == sorted(set(VEHICLES) - {row["category"]})
        assert len(row["neg_attributes"]) == 2 and all(row["neg_attributes"])
    assert json.loads((output / "finedefics_data.json").read_text())["object_noun"] == "vehicle"

    # demo --data opens it (carving validation rows from train)
    from finedefics_training.demo.data import DemoData

    demo = DemoData.open(output, tmp_path / "prepared")
    assert {c["name"] for c in demo.categories} == set(VEHICLES) and demo.noun.singular == "vehicle"
    capsys.readouterr()

    # The same command again is refused: the folder holds a run
    first = dataset_rows(output)
    assert main(command) == 2
    error = capsys.readouterr().err.strip()
    assert "holds an earlier describe run" in error and "--resume" in error and len(error.splitlines()) == 1

    # With --resume, every answer comes from the cache and the dataset is the same
    assert main(command + ["--resume"]) == 0
    again = json.loads((output / "describe_report.json").read_text())
    assert again["answers"] == {"total": 45, "from_cache": 45, "computed": 0}
    assert again["models"]["vqa"]["loaded"] is False  # nothing to ask: the model's weights are never read
    assert dataset_rows(output) == first


# ----------------------------------------------------------------------------- batching
QUESTIONS = [load_prompt("attribute_question").format(attribute=a, noun="vehicle")
             for a in ("body colour", "wheels", "roof pillar shape", "stripe")]


@pytest.mark.parametrize("family", ["demo_base", "idefics2", "qwen2_vl", "smolvlm"])
def test_batched_answers_equal_answers_asked_one_at_a_time(family, models, tmp_path):
    """Left padding is correct: prompts of different lengths in one batch get the answers they get alone."""
    from finedefics_data.describe_models import load_vqa_model

    folder = {"demo_base": DEMO_BASE, "idefics2": models["idefics2"]}.get(family)
    folder = folder or save_stock_family(family, tmp_path / family)
    vqa = load_vqa_model(str(folder))
    if family != "demo_base":
        assert not type(vqa.model).__name__.startswith("Finedefics")  # the stock class, through the Auto classes
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (40 + 8 * i, 64, 3), dtype=np.uint8)) for i in range(4)]
    lengths = {len(vqa.tokenizer(vqa.prompt(q))["input_ids"]) for q in QUESTIONS}
    assert len(lengths) > 1  # the batch really is padded
    alone = [vqa.answer([image], [question], 8)[0] for image, question in zip(images, QUESTIONS)]
    batched = vqa.answer(images, QUESTIONS, 8)
    assert batched == alone
    assert any(answer.strip() for answer in alone)


# ----------------------------------------------------------------------------- text models
def test_attribute_list_and_summaries_come_from_the_text_model(models, tmp_path):
    """The attribute model is asked the attribute_list prompt and the summary model the summary prompt (a tiny
    Llama taught to answer them); what they write is read as a direct call to the same model reads, and a batch
    completes as its prompts do alone."""
    from finedefics_data.describe_models import load_text_model

    lm = load_text_model(str(models["causal_lm"]), "--summary-model")
    prompts = [load_prompt("summary").format(noun="vehicle", pairs=pairs)
               for pairs in ("body colour: red", "body colour: blue\nwheels: black", "roof: flat")]
    assert lm.complete(prompts, 12) == [lm.complete([p], 12)[0] for p in prompts]

    images = write_image_folder(tmp_path / "images")
    settings = DescribeSettings(vqa_model=str(models["idefics2"]), attribute_model=str(models["causal_lm"]),
                                summary_model=str(models["causal_lm"]), noun=ObjectNoun.of("vehicle"),
                                max_new_tokens=6, progress=False)
    report = describe_folder(images, tmp_path / "out", settings)
    assert report["attributes"] == ["body colour", "wheels", "roof"]
    assert report["models"]["attribute"]["name"] == report["models"]["summary"]["name"] == str(models["causal_lm"])
    assert report["answers"]["computed"] == 6 * 3 + 1 + report["described"]  # VQA, the attribute list, summaries
    train = load_from_disk(str(tmp_path / "out"))["train"]
    described = 0
    for row in train:
        values = json.loads(row["attributes"])
        if not values:
            assert row["attribute"] == ""
            continue
        pairs = "\n".join(f"{a}: {v}" for a, v in values.items())
        written = one_sentence(lm.complete([load_prompt("summary").format(noun="vehicle", pairs=pairs)], 48)[0])
        assert row["attribute"] == written and written.startswith("a vehicle with")
        described += 1
    assert described == report["described"] > 0

    refusing = save_tiny_causal_lm(tmp_path / "refusing", {  # writes a sentence, not a list of attributes
        load_prompt("attribute_list").format(super_category="vehicles"): " I would rather not write any list today"})
    settings.attribute_model = str(refusing)
    with pytest.raises(ValueError, match=f"--attribute-model {refusing} proposed no attributes for vehicles"):
        describe_folder(images, tmp_path / "out2", settings)


# ----------------------------------------------------------------------------- bad input
def _error(argv, capsys) -> str:
    capsys.readouterr()  # only what this command prints
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    return lines[0]


def _describe(images, output, model, *extra):
    return ["data", "describe", str(images), "--vqa-model", str(model), "--attributes", "body colour",
            "--output", str(output), "--no-progress", *extra]


def test_inputs_that_make_no_recognition_dataset_are_refused(tmp_path, models, capsys):
    flat = tmp_path / "flat"
    flat.mkdir()
    Image.new("RGB", (16, 16)).save(flat / "a.png")
    assert "has no category subfolders" in _error(_describe(flat, tmp_path / "o1", models["idefics2"]), capsys)

    single = write_image_folder(tmp_path / "single", categories={"Halden Rook": "red"})
    assert "single category ('Halden Rook')" in _error(_describe(single, tmp_path / "o2", models["idefics2"]), capsys)

    empty = write_image_folder(tmp_path / "empty")
    (empty / "Vell Spur").mkdir()
    (empty / "Vell Spur" / "notes.txt").write_text("no pictures here")
    message = _error(_describe(empty, tmp_path / "o3", models["idefics2"]), capsys)
    assert "Vell Spur holds no image files" in message

    mixed = write_image_folder(tmp_path / "mixed", per_split={"train": 1})
    (mixed / "extras").mkdir()
    assert "mixes split folders (train) with other folders (extras)" in _error(
        _describe(mixed, tmp_path / "o4", models["idefics2"]), capsys)
    assert not any((tmp_path / name).exists() for name in ("o1", "o2", "o3", "o4"))  # nothing written


def test_models_that_cannot_answer_are_refused_naming_them(tmp_path, models, capsys):
    images = write_image_folder(tmp_path / "images")
    lm = models["causal_lm"]
    message = _error(_describe(images, tmp_path / "o1", lm), capsys)
    assert f"--vqa-model {lm} is a 'llama' model, which is no image-text-to-text model" in message

    no_template = save_stock_idefics2(tmp_path / "no-template", chat_template=False)
    message = _error(_describe(images, tmp_path / "o2", no_template), capsys)
    assert f"--vqa-model {no_template} has no chat template" in message

    message = _error(["data", "describe", str(images), "--vqa-model", str(models["idefics2"]), "--attribute-model",
                      str(models["idefics2"]), "--output", str(tmp_path / "o3")], capsys)
    assert f"--attribute-model {models['idefics2']} is a 'idefics2' model, which is no text-generation" in message

    missing = tmp_path / "nowhere"
    assert f"--vqa-model {missing}: no model there" in _error(_describe(images, tmp_path / "o4", missing), capsys)
    assert "give the attributes to ask" in _error(["data", "describe", str(images), "--vqa-model",
                                                   str(models["idefics2"]), "--output", str(tmp_path / "o5")], capsys)
    assert not any((tmp_path / f"o{i}").exists() for i in range(1, 6))


def test_an_output_folder_with_other_data_is_refused_even_with_resume(tmp_path, models, capsys):
    images = write_image_folder(tmp_path / "images")
    other = tmp_path / "other"
    other.mkdir()
    (other / "thesis.tex").write_text("keep me")
    message = _error(_describe(images, other, models["idefics2"], "--resume"), capsys)
    assert "is not empty and holds no describe run" in message
    assert sorted(p.name for p in other.iterdir()) == ["thesis.tex"]


def test_unreadable_images_are_named_and_skipped_and_empty_answers_never_become_descriptions(tmp_path, models,
                                                                                             monkeypatch):
    from finedefics_data.describe_models import VQAModel

    images = write_image_folder(tmp_path / "images", per_split={"train": 2, "test": 1})
    truncated = images / "train" / "Halden Rook" / "cut.png"
    truncated.write_bytes((images / "train" / "Halden Rook" / "0.png").read_bytes()[:60])
    (images / "train" / "Mirel Vane" / "text.jpg").write_text("not a picture")
    (images / "train" / "Mirel Vane" / "labels.txt").write_text("not an image file either")

    real_answer = VQAModel.answer

    def answer(self, pictures, questions, max_new_tokens=16):  # "wheels" and every 60 px image: empty answers
        said = real_answer(self, pictures, questions, max_new_tokens)
        return ["" if ("wheels" in q or picture.size[0] != 64) else a
                for picture, q, a in zip(pictures, questions, said)]

    monkeypatch.setattr(VQAModel, "answer", answer)
    test_image = Image.open(images / "test" / "Corvel Dart" / "0.png").resize((60, 48))
    for category in VEHICLES:
        test_image.save(images / "test" / category / "0.png")  # 60 px wide: every answer about it is empty
    settings = DescribeSettings(vqa_model=str(models["idefics2"]), attributes=["body colour", "wheels"],
                                noun=ObjectNoun.of("vehicle"), max_new_tokens=6, progress=False)
    report = describe_folder(images, tmp_path / "out", settings)

    skipped = {entry["image"]: entry["problem"] for entry in report["skipped_images"]["images"]}
    assert set(skipped) == {str(truncated), str(images / "train" / "Mirel Vane" / "text.jpg")}
    assert "truncated" in skipped[str(truncated)] or "cannot read" in skipped[str(truncated)]
    assert report["skipped_images"]["count"] == 2 and report["ignored_files"] == 1
    assert report["images"] == 11 and report["described"] + report["without_description"] == 9
    rates = report["attribute_answers"]
    assert rates["wheels"]["empty"] == 9 and rates["wheels"]["empty_rate"] == 1.0
    assert rates["body colour"]["empty"] == 3  # the test split's three images
    assert report["without_description"] >= 3
    splits = load_from_disk(str(tmp_path / "out"))
    assert len(splits["train"]) == 6 and len(splits["test"]) == 3  # the two unreadable files' rows are gone
    for row in splits["test"]:
        assert row["attribute"] == "" and row["attributes"] == "{}"
    for row in splits["train"]:
        assert "wheels" not in row["attribute"] and "wheels" not in json.loads(row["attributes"])


# ----------------------------------------------------------------------------- negatives
def test_siblings_are_the_categories_with_the_most_similar_values_within_the_taxonomy_group_first():
    names = ["Alder", "Birch", "Cedar", "Dogwood"]
    profiles = np.array([[1, 0, 0], [0.9, 0.1, 0], [0, 1, 0], [0, 0.2, 1]], dtype=float)
    profiles /= np.linalg.norm(profiles, axis=1, keepdims=True)
    assert mine_siblings(names, profiles, 2)["Alder"] == ["Birch", "Cedar"]
    assert mine_siblings(names, profiles, 1)["Dogwood"] == ["Cedar"]
    taxonomy = {"Alder": "north", "Dogwood": "north", "Birch": "south", "Cedar": "south"}
    grouped = mine_siblings(names, profiles, 2, taxonomy)
    assert grouped["Alder"] == ["Dogwood", "Birch"]  # the group first, however unlike
    assert grouped["Cedar"] == ["Birch", "Dogwood"]


# ----------------------------------------------------------------------------- resuming
def test_a_run_killed_midway_resumes_from_the_cache_to_the_same_output(tmp_path):
    """SIGKILL while answers are being written, rerun with --resume: only the missing answers are computed, and
    the output is the one an uninterrupted run writes."""
    import os
    import signal
    import sqlite3
    import subprocess
    import sys
    import time

    images = write_image_folder(tmp_path / "images", per_split={"train": 4})  # 12 images x 2 questions
    killed, whole = tmp_path / "killed", tmp_path / "whole"
    argv = ["data", "describe", str(images), "--vqa-model", str(DEMO_BASE), "--attributes", "body colour,wheels",
            "--noun", "vehicle", "--batch-size", "2", "--max-new-tokens", "4", "--no-progress"]
    process = subprocess.Popen([sys.executable, "-m", "finedefics_cli", *argv, "--output", str(killed)],
                               env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
    cached, deadline = 0, time.monotonic() + 600
    while cached < 4 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
        if (killed / "describe_cache.sqlite").is_file():
            try:
                with sqlite3.connect(killed / "describe_cache.sqlite") as db:
                    cached = db.execute("SELECT COUNT(*) FROM answers").fetchone()[0]
            except sqlite3.OperationalError:  # the table is not created yet, or locked by a commit in flight
                pass
    process.send_signal(signal.SIGKILL)
    _, errors = process.communicate()
    assert process.returncode == -signal.SIGKILL, errors.decode()[-2000:]
    assert not (killed / "describe_report.json").exists()  # it really died midway
    with sqlite3.connect(killed / "describe_cache.sqlite") as db:
        kept = db.execute("SELECT COUNT(*) FROM answers").fetchone()[0]
    assert 4 <= kept < 24

    assert main(argv + ["--output", str(killed), "--resume"]) == 0
    report = json.loads((killed / "describe_report.json").read_text())
    assert report["answers"] == {"total": 24, "from_cache": kept, "computed": 24 - kept}

    assert main(argv + ["--output", str(whole)]) == 0
    assert json.loads((whole / "describe_report.json").read_text())["answers"]["computed"] == 24
    assert dataset_rows(killed) == dataset_rows(whole)
    assert (killed / "describe_answers.jsonl").read_text() == (whole / "describe_answers.jsonl").read_text()


# ----------------------------------------------------------------------------- the README's command chain
@pytest.mark.slow
def test_describe_then_init_model_two_stage_eval_and_push(tmp_path, models):
    """README "Your own images, no descriptions": describe -> init-model -> two-stage -> eval -> push."""
    import yaml

    four = {**VEHICLES, "Tarrow Spur": "orange"}  # FOCI's protocol asks 4-way multiple choice
    images = write_image_folder(tmp_path / "my_images", per_split={"train": 3, "test": 1}, categories=four)
    described, init, run = tmp_path / "described", tmp_path / "init", tmp_path / "run"
    assert main(["data", "describe", str(images), "--vqa-model", str(models["idefics2"]), "--attributes",
                 "body colour,wheels", "--noun", "vehicle", "--max-new-tokens", "4", "--output", str(described),
                 "--no-progress"]) == 0
    assert main(["init-model", "--preset", "micro", "--corpus", str(described), str(init)]) == 0
    assert json.loads((init / "config.json").read_text())["object_noun"] == "vehicle"
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(dict(
        model_name_or_path=str(init), dataset_dir=str(described), output_dir=str(run), tuning="full",
        torch_dtype="float32", use_cpu=True, num_negatives=3, max_steps=2, stage2_max_steps=2,
        per_device_train_batch_size=4, learning_rate=1e-3, logging_steps=1, save_strategy="no", report_to="none",
        seed=0, dataloader_num_workers=0, disable_tqdm=True)))
    assert main(["two-stage", "--config", str(recipe)]) == 0
    final = run / "stage2" / "final"
    assert main(["eval", "--model", str(final), "--benchmark", str(described), "--output-dir", str(tmp_path / "eval"),
                 "--no-progress", "--no-plots", "--bootstrap-samples", "0", "--write-card"]) == 0
    report = json.loads(next((tmp_path / "eval").rglob("report.json")).read_text())
    assert report["protocol"]["query"] == "Which of these vehicles is shown in the image?"
    staged = tmp_path / "staged"
    assert main(["push", str(final), "--repo-id", "me/finedefics-vehicles", "--report", str(tmp_path / "eval"),
                 "--stage-only", str(staged)]) == 0
    assert "the vehicle in the image" in (staged / "README.md").read_text()


def test_splits_option_describes_and_writes_only_the_splits_named(tmp_path, capsys):
    images = write_image_folder(tmp_path / "my_images", per_split={"train": 1, "test": 1})
    command = ["data", "describe", str(images), "--vqa-model", str(DEMO_BASE), "--attributes", "body colour",
               "--noun", "vehicle", "--no-progress", "--splits", "test"]
    assert main(command + ["--output", str(tmp_path / "described")]) == 0
    report = json.loads((tmp_path / "described" / "describe_report.json").read_text())
    assert report["splits"] == {"test": 3} and report["answers"]["computed"] == 3
    assert list(load_from_disk(str(tmp_path / "described"))) == ["test"]
    error = _error(command[:-1] + ["test,validation", "--output", str(tmp_path / "other")], capsys)
    assert "has no validation split (it has test, train)" in error, error  # split folders are read in name order
    assert not (tmp_path / "other").exists()  # refused before anything was written
