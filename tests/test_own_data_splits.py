"""The user's own splits: one file per split into one dataset folder, an imagefolder's train/ and test/ kept,
`demo --data` evaluating on the dataset's own test split, and the folders users point at answered with the
commands that prepare them."""

import json
import logging

import datasets
import pytest
from reference_format import MODELS, write_reference_dataset

from finedefics_cli import main
from finedefics_data.folders import how_to_prepare, what_folder_is
from finedefics_training.demo.data import FEW_TEST_IMAGES, DemoData


@pytest.fixture(scope="module")
def cars(tmp_path_factory):
    return write_reference_dataset(tmp_path_factory.mktemp("cars"), train_per_model=6, test_per_model=3)


def build_dataset(cars, out, capsys=None):
    assert main(["data", "csv", str(cars / "pretrain.csv"), "--image-root", str(cars / "images"), "--noun", "car",
                 "--output", str(out)]) == 0
    assert main(["data", "imagefolder", str(cars / "test"), "--split", "test", "--noun", "car",
                 "--output", str(out)]) == 0
    return out


def test_a_test_imagefolder_joins_the_training_rows_as_the_test_split(cars, tmp_path, capsys):
    out = build_dataset(cars, tmp_path / "ds")
    printed = capsys.readouterr().out
    assert "saved test: 15 rows" in printed and "splits now: train 26, test 15" in printed
    splits = datasets.load_from_disk(str(out))
    assert sorted(splits) == ["test", "train"]
    assert sorted(set(splits["test"]["category"])) == sorted(MODELS)


def test_one_csv_per_split_and_the_noun_must_agree(cars, tmp_path, capsys):
    out = tmp_path / "ds"
    csv = str(cars / "pretrain.csv")
    assert main(["data", "csv", csv, "--image-root", str(cars / "images"), "--noun", "car", "--output",
                 str(out)]) == 0
    assert main(["data", "csv", csv, "--image-root", str(cars / "images"), "--split", "validation",
                 "--output", str(out)]) == 0
    assert sorted(datasets.load_from_disk(str(out))) == ["train", "validation"]
    assert "splits now: train 26, validation 26" in capsys.readouterr().out
    assert main(["data", "csv", csv, "--image-root", str(cars / "images"), "--split", "test", "--noun", "truck",
                 "--output", str(out)]) == 2
    assert "records the noun car but --noun gives truck" in capsys.readouterr().err
    assert sorted(datasets.load_from_disk(str(out))) == ["train", "validation"]  # nothing written


def test_imagefolder_with_train_and_test_folders_keeps_both(tmp_path, capsys):
    from PIL import Image

    for split, count in (("train", 2), ("test", 1)):
        for name in ("Alpha", "Beta"):
            folder = tmp_path / "photos" / split / name
            folder.mkdir(parents=True)
            for index in range(count):
                Image.new("RGB", (8, 8), "red").save(folder / f"{index}.png")
    assert what_folder_is(tmp_path / "photos") == "imagefolder"
    assert main(["data", "imagefolder", str(tmp_path / "photos"), "--output", str(tmp_path / "ds")]) == 0
    splits = datasets.load_from_disk(str(tmp_path / "ds"))
    assert {name: len(table) for name, table in splits.items()} == {"train": 4, "test": 2}


def test_a_bad_metadata_row_names_file_line_and_field(tmp_path, capsys):
    from PIL import Image

    folder = tmp_path / "test"
    folder.mkdir()
    Image.new("RGB", (8, 8)).save(folder / "a.png")
    (folder / "metadata.jsonl").write_text(json.dumps({"file_name": "a.png", "category": "Alpha"}) + "\n"
                                           + json.dumps({"file_name": "a.png"}) + "\n")
    assert main(["data", "imagefolder", str(folder), "--split", "test", "--output", str(tmp_path / "ds")]) == 2
    assert "metadata.jsonl, row line 2, field 'category'" in capsys.readouterr().err


def test_data_csv_on_a_dataset_root_gives_the_commands_that_read_it(cars, capsys):
    assert main(["data", "csv", str(cars)]) == 2
    err = capsys.readouterr().err
    assert "is a folder (reference)" in err
    assert f"finedefics data csv {cars / 'pretrain.csv'} --image-root {cars / 'images'}" in err
    assert f"finedefics data imagefolder {cars / 'test'} --split test" in err


def test_data_csv_without_image_root_says_which_folder(cars, capsys):
    assert main(["data", "csv", str(cars / "pretrain.csv")]) == 2
    assert "--image-root is needed" in capsys.readouterr().err


def test_demo_data_on_a_root_or_an_image_folder_names_the_commands(cars, tmp_path):
    (cars / "categories.json").write_text("[]")  # a dataset's own category list: no synthetic benchmark
    try:
        with pytest.raises(ValueError, match="the reference release's CSVs: make the dataset folder with") as error:
            DemoData.open(cars, tmp_path / "prepared")
        assert "finedefics data csv" in str(error.value) and "config.json" not in str(error.value).split(";")[1]
    finally:
        (cars / "categories.json").unlink()
    assert "finedefics data imagefolder" in how_to_prepare(cars / "test")


def test_demo_data_evaluates_on_the_datasets_own_test_split(cars, tmp_path, caplog):
    data_dir = build_dataset(cars, tmp_path / "ds")
    with caplog.at_level(logging.WARNING, logger="finedefics_training.demo_data"):
        data = DemoData.open(data_dir, tmp_path / "prepared")
    assert len(data.splits["test"]) == 15  # the test images, not rows carved from train
    assert data.split_origins["test"] == "the dataset's own"
    assert data.split_origins["validation"].startswith("carved from the training rows")
    assert len(data.splits["train"]) + len(data.splits["validation"]) == 26  # validation from train only
    assert f"5 of 5 categories have fewer than {FEW_TEST_IMAGES} test images" in caplog.text
    lines = "\n".join(data.split_lines("test"))
    assert "- test: 15 rows, the dataset's own" in lines
    assert "rare slice of the test split: 1 categories, n = 3 images (common: n = 12)" in lines
    assert f"5 categories have fewer than {FEW_TEST_IMAGES} test images" in lines
