"""Data hygiene through the real `finedefics data` commands: category names spelled two ways are refused, naming
both spellings, or merged with --merge-duplicate-names (reported); nothing else changes."""

from __future__ import annotations

import csv
import os
import shutil
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))
from reference_format import MODELS, write_reference_dataset  # noqa: E402

from finedefics_cli import main  # noqa: E402
from finedefics_data.names import DuplicateCategoryNames, unify_category_names  # noqa: E402


def _respell(csv_path, rows: int, old: str, new: str) -> None:
    """Write ``new`` for ``old`` in the category cell of the first ``rows`` rows that have it, and in every
    negative cell of those rows."""
    with open(csv_path, newline="", encoding="utf-8") as handle:
        table = list(csv.DictReader(handle))
    changed = 0
    for row in table:
        if row["category"] == old and changed < rows:
            row["category"] = new
            changed += 1
    with open(csv_path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(table[0]))
        writer.writeheader()
        writer.writerows(table)


@pytest.fixture
def cars(tmp_path):
    return write_reference_dataset(tmp_path / "cars", train_per_model=4, test_per_model=1)


def _read(cars, output, *extra):
    return main(["data", "csv", str(cars / "pretrain.csv"), "--image-root", str(cars / "images"), "--noun", "car",
                 "--no-check-images", "--output", str(output), *extra])


def test_two_spellings_of_a_category_are_refused_naming_both(cars, tmp_path, capsys):
    _respell(cars / "pretrain.csv", 1, "Halden Rook", "halden  rook")
    assert _read(cars, tmp_path / "data") == 2
    error = capsys.readouterr().err
    assert "1 category names are spelled more than one way" in error
    assert "'Halden Rook' (3 rows) and 'halden  rook' (1 rows)" in error and "--merge-duplicate-names" in error
    assert not (tmp_path / "data").exists()  # nothing written


def test_merging_keeps_the_most_frequent_spelling_and_reports_it(cars, tmp_path, capsys):
    import datasets

    _respell(cars / "pretrain.csv", 1, "Halden Rook", "halden-rook")
    assert _read(cars, tmp_path / "data", "--merge-duplicate-names") == 0
    assert "category name merged: 'halden-rook' -> 'Halden Rook': 1" in capsys.readouterr().out
    train = datasets.load_from_disk(str(tmp_path / "data"))["train"]
    assert set(train["category"]) == set(MODELS) and len(train) == 4 * 4 + 1


def test_a_test_split_spelled_differently_from_the_folders_training_split(cars, tmp_path, capsys):
    """The folder's own spelling wins a merge; without the flag the error says which spelling is the folder's."""
    import datasets

    assert _read(cars, tmp_path / "data") == 0
    test = tmp_path / "test-images"
    shutil.copytree(cars / "test", test)
    metadata = (test / "metadata.jsonl").read_text().replace('"Ostra Vela"', '"OSTRA VELA"')
    (test / "metadata.jsonl").write_text(metadata)
    command = ["data", "imagefolder", str(test), "--split", "test", "--noun", "car",
               "--output", str(tmp_path / "data")]
    assert main(command) == 2
    assert "'Ostra Vela' (0 rows, in the folder) and 'OSTRA VELA' (1 rows)" in capsys.readouterr().err
    assert main([*command, "--merge-duplicate-names"]) == 0
    splits = datasets.load_from_disk(str(tmp_path / "data"))
    assert set(splits["test"]["category"]) == set(MODELS) and len(splits["train"]) == 4 * 4 + 1


def test_a_merge_drops_a_negative_that_became_the_row_itself_with_its_description():
    records = [{"category": "Halden Rook", "neg_categories": ["halden rook", "Ostra Vela", "ostra vela"],
                "neg_attributes": ["a blue car.", "a green car.", "a green car, again."]},
               {"category": "Halden Rook", "neg_categories": []}]
    assert unify_category_names(records, merge=True) == {"halden rook": "Halden Rook", "ostra vela": "Ostra Vela"}
    assert records[0]["neg_categories"] == ["Ostra Vela"] and records[0]["neg_attributes"] == ["a green car."]
    with pytest.raises(DuplicateCategoryNames, match="Halden Rook"):
        unify_category_names([{"category": "Halden Rook"}, {"category": "Halden rook"}])
    assert unify_category_names([{"category": "Halden Rook"}, {"category": "Halden Rock"}]) == {}  # no near miss
