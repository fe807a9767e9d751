"""Readers for real data: the reference CSV, `datasets` classification sets and CUB-200 attributes.

Every bad input must either raise an error naming the file, row and field, or (errors="skip") be
skipped and counted with its row number: no row disappears silently.
"""

import csv
import json
from pathlib import Path

import pytest
from PIL import Image

from finedefics_data.choices import LETTER_AND_NAME_DISAGREE, NAMES_NO_OPTION, NO_OPTIONS_FOUND, NOT_AN_OPTION_LETTER
from finedefics_data.kinds import NO_KNOWN_OPTION
from finedefics_data.readers import (
    DESCRIPTION_REWORDED,
    MC_NOT_READ,
    MC_READ,
    NEW_CATEGORIES,
    build_cub_records,
    category_attributes,
    cub_class_name,
    from_classification_dataset,
    read_cub_attributes,
    read_reference_csv,
)
from finedefics_data.schema import RecordError, validate_record
from finedefics_data.synth import REFERENCE_COLUMNS

NEG = "\t\n"


# ============================================================================= reference CSV
@pytest.fixture
def image_root(tmp_path):
    root = tmp_path / "images"
    (root / "birds").mkdir(parents=True)
    for name, colour in [("a.png", "red"), ("b.png", "blue"), ("c.png", "green")]:
        Image.new("RGB", (8, 8), colour).save(root / "birds" / name)
    (root / "birds" / "broken.png").write_bytes(b"this is not a png")
    return root


def row(**cells):
    base = {c: "" for c in REFERENCE_COLUMNS}
    base.update(question="Describe the bird.", answer="a red bird.", type="single-image", image_path="birds/a.png",
                attribute="a red bird with a cone bill.", category="Red Finch")
    base.update(cells)
    return base


def write_csv(path: Path, rows, columns=REFERENCE_COLUMNS, encoding="utf-8") -> Path:
    with open(path, "w", newline="", encoding=encoding) as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


def test_reference_csv_reads_negatives_labels_and_counts_two_image_rows(tmp_path, image_root):
    path = write_csv(tmp_path / "train.csv", [
        row(neg_category="Blue Finch" + NEG + "Green Finch",
            neg_attribute="a blue bird with a cone bill." + NEG + "a green bird with a cone bill."),
        row(category="Blue Finch", image_path="birds/b.png", neg_category="Red Finch" + NEG,
            neg_attribute="a red bird with a cone bill." + NEG),
        row(type="multi-image", image_path="", image_path_1="birds/a.png", image_path_2="birds/b.png",
            question="Same species?", answer="No."),
    ])
    records = read_reference_csv(path, image_root)
    assert len(records) == 2
    first, second = records
    assert first["neg_categories"] == ["Blue Finch", "Green Finch"]
    assert first["neg_attributes"] == ["a blue bird with a cone bill.", "a green bird with a cone bill."]
    assert Path(first["image"]) == image_root / "birds" / "a.png"
    assert second["neg_categories"] == ["Red Finch"]  # trailing separator is not an empty negative ...
    assert records.report.notes  # ... but it is counted
    assert [r["label"] for r in records] == [1, 0]  # index into sorted names: Blue Finch, Red Finch
    assert records.report.rows_read == 3 and records.report.skipped == {"two-image row (multi_image='skip')": [3]}
    kept = read_reference_csv(path, image_root, multi_image="keep")
    assert len(kept) == 3 and kept[2]["image"] is None and len(kept[2]["images"]) == 2
    dataset = records.to_dataset()
    assert dataset[0]["image"].size == (8, 8) and dataset[1]["category"] == "Blue Finch"


def test_reference_csv_crlf_separator(tmp_path, image_root):
    path = write_csv(tmp_path / "crlf.csv", [row(neg_category="Blue Finch\t\r\nGreen Finch",
                                                neg_attribute="a blue bird.\t\r\na green bird.")])
    assert read_reference_csv(path, image_root)[0]["neg_categories"] == ["Blue Finch", "Green Finch"]


@pytest.mark.parametrize("cells, field, message", [
    (dict(image_path="birds/missing.png"), "image_path", "not found"),
    (dict(image_path="birds/broken.png"), "image_path", "cannot read image"),
    (dict(attribute="   "), "attribute", "empty description"),
    (dict(neg_category="Red Finch" + NEG + "Blue Finch"), "neg_categories", "positive category 'Red Finch' itself"),
    (dict(neg_category="Blue Finch" + NEG + NEG + "Green Finch"), "neg_categories", "negative 2 is empty"),
    (dict(neg_category="Blue Finch" + NEG + "Blue Finch"), "neg_categories", "more than once"),
    (dict(neg_category="Blue Finch" + NEG + "Green Finch", neg_attribute="a blue bird."), "neg_attributes",
     "1 descriptions for 2"),
    (dict(neg_category="Blue Finch", neg_attribute="  "), "neg_attributes", "empty description"),
    (dict(category=""), "category", "is empty"),
    (dict(type="multi-image", image_path_1="birds/a.png"), "image_path_2", "is empty"),
])
def test_reference_csv_bad_rows_name_file_row_and_field(tmp_path, image_root, cells, field, message):
    path = write_csv(tmp_path / "bad.csv", [row(), row(**cells)])
    with pytest.raises(RecordError, match=message) as error:
        read_reference_csv(path, image_root, multi_image="keep")
    assert "bad.csv" in str(error.value) and "row 2 (line 3)" in str(error.value)
    assert error.value.field == field


def test_reference_csv_skip_mode_counts_every_skipped_row(tmp_path, image_root):
    path = write_csv(tmp_path / "mixed.csv", [row(), row(image_path="birds/missing.png"), row(category="Blue Finch"),
                                             row(neg_category="Red Finch")])
    records = read_reference_csv(path, image_root, errors="skip")
    report = records.report
    assert len(records) == 2 and report.rows_read == 4 and report.rows_skipped == 2
    assert sorted(r for rows in report.skipped.values() for r in rows) == ["2 (line 3)", "4 (line 5)"]
    assert "skipped 2" in report.summary()


def test_reference_csv_missing_column_and_non_utf8(tmp_path, image_root):
    columns = [c for c in REFERENCE_COLUMNS if c != "neg_category"]
    path = write_csv(tmp_path / "nocol.csv", [row()], columns=columns)
    with pytest.raises(RecordError, match=r"nocol.csv, field 'neg_category': column is missing"):
        read_reference_csv(path, image_root)
    latin = write_csv(tmp_path / "latin.csv", [row(), row(attribute="a bird with a crème breast.")],
                      encoding="latin-1")
    with pytest.raises(RecordError, match=r"latin.csv: line 3 is not UTF-8"):
        read_reference_csv(latin, image_root)


def test_reference_csv_more_cells_than_header(tmp_path, image_root):
    path = write_csv(tmp_path / "wide.csv", [row()])
    path.write_text(path.read_text() + "q,a,single-image,birds/a.png,,,desc,,Red Finch,,EXTRA\n")
    with pytest.raises(RecordError, match=r"row 2 \(line 3\): has more cells than the header"):
        read_reference_csv(path, image_root)


# ============================================================================= datasets
@pytest.fixture
def imagefolder(tmp_path):
    root = tmp_path / "cls"
    for name, colour in [("001.Red_Finch", "red"), ("002.Blue_Finch", "blue"), ("003.Green_Tit", "green")]:
        (root / "train" / name).mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (8, 8), colour).save(root / "train" / name / f"{i}.png")
    return root


CLASS_ATTRIBUTES = {
    "Red Finch": {"color": "red", "bill": "cone", "size": "small"},
    "Blue Finch": {"color": "blue", "bill": "cone", "size": "small"},
    "Green Tit": {"color": "green", "bill": "dagger", "size": "small"},
}
CLASS_DESCRIPTIONS = {name: f"a small {a['color']} bird with a {a['bill']} bill."
                      for name, a in CLASS_ATTRIBUTES.items()}


def test_imagefolder_gets_descriptions_and_mined_negatives(imagefolder):
    import datasets

    ds = datasets.load_dataset("imagefolder", data_dir=str(imagefolder), split="train")
    out = from_classification_dataset(ds, descriptions=CLASS_DESCRIPTIONS, attributes=CLASS_ATTRIBUTES,
                                      category_names=cub_class_name, num_negatives=2)
    assert len(out) == 6
    by_name = {r["category"]: r for r in out}
    assert set(by_name) == set(CLASS_ATTRIBUTES)
    red = by_name["Red Finch"]
    # shares bill and size with Blue Finch, size only with Green Tit
    assert red["neg_categories"] == ["Blue Finch", "Green Tit"]
    assert red["neg_attributes"] == [CLASS_DESCRIPTIONS["Blue Finch"], CLASS_DESCRIPTIONS["Green Tit"]]
    assert red["attribute"] == CLASS_DESCRIPTIONS["Red Finch"] and json.loads(red["attributes"])["bill"] == "cone"
    assert all(sorted(CLASS_ATTRIBUTES)[r["label"]] == r["category"] for r in out)
    assert out[0]["image"].size == (8, 8)


def test_corrupt_image_in_a_dataset_is_an_error_or_a_counted_skip(imagefolder):
    import datasets

    (imagefolder / "train" / "002.Blue_Finch" / "9.png").write_bytes(b"\x89PNG broken")
    ds = datasets.load_dataset("imagefolder", data_dir=str(imagefolder), split="train")
    with pytest.raises(RecordError, match=r"birds, row 4, field 'image': cannot (read|decode) image .*9.png"):
        from_classification_dataset(ds, source="birds")
    out, report = from_classification_dataset(ds, errors="skip", return_report=True, source="birds")
    assert len(out) == 6 and report.rows_skipped == 1 and report.rows_read == 7
    assert report.notes  # no descriptions and no negatives given: counted, not silent


def test_hub_style_dataset_with_string_labels_and_per_row_descriptions():
    import datasets

    images = [Image.new("RGB", (8, 8), c) for c in ("red", "blue", "red")]
    ds = datasets.Dataset.from_dict({"img": images, "species": ["Red Finch", "Blue Finch", "Red Finch"]})
    ds = ds.cast_column("img", datasets.Image())
    out, report = from_classification_dataset(ds, image_column="img", label_column="species",
                                              descriptions=["a red bird.", "a blue bird.", ""],
                                              negatives={"Red Finch": ["Blue Finch"], "Blue Finch": ["Red Finch"]},
                                              return_report=True)
    assert out.column_names[0] == "image"
    assert out["attribute"] == ["a red bird.", "a blue bird.", ""]
    assert out["neg_attributes"][0] == ["a blue bird."]  # the negative's first per-image description
    assert report.notes["rows without a description (attribute = '')"] == 1
    with pytest.raises(RecordError, match=r"field 'species': label None"):
        bad = datasets.Dataset.from_dict({"img": images[:2],
                                          "species": ["Red Finch", None]}).cast_column("img", datasets.Image())
        from_classification_dataset(bad, image_column="img", label_column="species", source="hub")
    with pytest.raises(RecordError, match=r"field 'label': column is missing"):
        from_classification_dataset(ds, image_column="img")
    with pytest.raises(RecordError, match="3 rows"):
        from_classification_dataset(ds, image_column="img", label_column="species", descriptions=["a"])
    with pytest.raises(RecordError, match=r"field 'attribute': is an empty description"):
        from_classification_dataset(ds, image_column="img", label_column="species", descriptions=["a.", "  ", "b."])


def test_integer_labels_need_names():
    import datasets

    ds = datasets.Dataset.from_dict({"image": [Image.new("RGB", (4, 4))],
                                     "label": [0]}).cast_column("image", datasets.Image())
    with pytest.raises(RecordError, match="integer labels with no names"):
        from_classification_dataset(ds)
    assert from_classification_dataset(ds, category_names=["Red Finch"])[0]["category"] == "Red Finch"


# ============================================================================= CUB-200-2011
CUB_ATTRIBUTES = [
    "has_bill_shape::cone", "has_bill_shape::dagger", "has_wing_color::brown", "has_wing_color::white",
    "has_size::small_(5_-_9_in)", "has_tail_shape::notched_tail", "has_primary_color::red", "has_primary_color::blue",
]


def write_cub(root: Path, labels: dict[int, dict[int, tuple[int, int]]], classes=("001.Red_Finch", "002.Blue_Jay"),
              image_class=None) -> Path:
    """A miniature CUB_200_2011 folder. labels: image id -> attribute id -> (is_present, certainty)."""
    (root / "attributes").mkdir(parents=True)
    (root / "attributes.txt").write_text("".join(f"{i} {a}\n" for i, a in enumerate(CUB_ATTRIBUTES, start=1)))
    lines = [f"{image} {attribute} {labels[image].get(attribute, (0, 1))[0]} "
             f"{labels[image].get(attribute, (0, 1))[1]} 3.5"
             for image in sorted(labels) for attribute in range(1, len(CUB_ATTRIBUTES) + 1)]
    (root / "attributes" / "image_attribute_labels.txt").write_text("\n".join(lines) + "\n")
    image_class = image_class or {image: 1 + (image - 1) % len(classes) for image in labels}
    (root / "classes.txt").write_text("".join(f"{i} {c}\n" for i, c in enumerate(classes, start=1)))
    (root / "images.txt").write_text("".join(f"{i} {classes[image_class[i] - 1]}/img_{i}.jpg\n" for i in labels))
    (root / "image_class_labels.txt").write_text("".join(f"{i} {image_class[i]}\n" for i in labels))
    (root / "train_test_split.txt").write_text("".join(f"{i} {int(i <= 2)}\n" for i in labels))
    for i in labels:
        folder = root / "images" / classes[image_class[i] - 1]
        folder.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (16, 16), "red").save(folder / f"img_{i}.jpg")
    return root


CUB_LABELS = {
    1: {1: (1, 4), 3: (1, 3), 4: (1, 2), 5: (1, 4), 6: (1, 3), 7: (1, 4)},  # red finch, white wings only guessed
    2: {2: (1, 3), 3: (1, 4), 5: (1, 3), 8: (1, 4)},                      # blue jay
    3: {1: (1, 3), 3: (1, 4), 6: (1, 4), 7: (1, 3)},                      # red finch
    4: {1: (1, 2), 8: (0, 4)},                                            # nothing certain enough
}


def test_cub_descriptions_follow_the_certainty_threshold(tmp_path):
    root = write_cub(tmp_path / "CUB_200_2011", CUB_LABELS)
    records = read_cub_attributes(root, certainty_threshold=3)
    first = records[0]
    assert first["attribute"] == "a small bird with a cone bill, brown wings, a notched tail and red plumage."
    assert json.loads(first["attributes"])["has_wing_color"] == ["brown"]
    assert first["category"] == "Red Finch" and first["file_name"] == "001.Red_Finch/img_1.jpg" and first["is_train"]
    assert records[3]["attribute"] == "" and any("no attribute" in note for note in records.report.notes)
    guessed = read_cub_attributes(root, certainty_threshold=2)
    assert "brown and white wings" in guessed[0]["attribute"] and "cone bill" in guessed[3]["attribute"]
    assert records.report.rows_read == 4 * len(CUB_ATTRIBUTES) and records.report.rows_skipped == 0


def test_cub_bad_lines_are_errors_or_counted(tmp_path):
    root = write_cub(tmp_path / "CUB_200_2011", CUB_LABELS)
    labels = root / "attributes" / "image_attribute_labels.txt"
    lines = labels.read_text().splitlines()
    lines[4] = "1 5 x 4 1.0"
    lines[6] = "1 99 1 4 1.0"
    lines[8] = lines[8] + " 0"  # an extra field, as in a few lines of CUB's own release
    labels.write_text("\n".join(lines) + "\n")
    with pytest.raises(RecordError,
                       match=r"image_attribute_labels.txt, row line 5: the first four fields must be integers"):
        read_cub_attributes(root)
    records = read_cub_attributes(root, errors="skip")
    assert records.report.rows_skipped == 2
    assert sorted(r for rows in records.report.skipped.values() for r in rows) == ["line 5", "line 7"]
    assert any("5 fields" in note for note in records.report.notes)
    (root / "attributes.txt").write_bytes("1 has_bill_shape::c\xf4ne\n".encode("latin-1"))
    with pytest.raises(RecordError, match=r"attributes.txt: line 1 is not UTF-8"):
        read_cub_attributes(root)


def test_cub_records_split_and_class_level_negatives(tmp_path):
    classes, image_class = ("001.Red_Finch", "002.Blue_Jay", "003.Cone_Tit"), {1: 1, 2: 2, 3: 1, 4: 3}
    uncertain = write_cub(tmp_path / "uncertain", CUB_LABELS, classes=classes, image_class=image_class)
    with pytest.raises(ValueError, match="'Cone Tit' has no attribute present"):
        build_cub_records(uncertain)  # its only image shows nothing at certainty >= 3
    root = write_cub(tmp_path / "CUB_200_2011", {**CUB_LABELS, 4: {1: (1, 3)}}, classes=classes,
                     image_class=image_class)
    splits = build_cub_records(root, certainty_threshold=3, num_negatives=2)
    assert [r["category"] for r in splits["train"]] == ["Red Finch", "Blue Jay"]
    assert [r["category"] for r in splits["test"]] == ["Red Finch", "Cone Tit"]
    red = splits["train"][0]
    # Red Finch {cone, brown, small, notched, red}: Blue Jay shares 2 of 7 values, Cone Tit 1 of 5.
    assert red["neg_categories"] == ["Blue Jay", "Cone Tit"]
    classes = category_attributes(read_cub_attributes(root))
    assert classes["Red Finch"]["has_bill_shape"] == ["cone"]
    assert red["neg_attributes"][0] == "a small bird with a dagger bill, brown wings and blue plumage."
    for split in splits.values():
        for i, record in enumerate(split):
            validate_record(record, "cub", i)
    with pytest.raises(ValueError, match="no possible negative"):
        build_cub_records(write_cub(tmp_path / "one", {1: CUB_LABELS[1]}, classes=("001.Red_Finch",)))


def test_cub_cli_writes_descriptions_and_dataset(tmp_path, capsys):
    import datasets

    from finedefics_cli import main

    root = write_cub(tmp_path / "CUB_200_2011", CUB_LABELS)
    assert main(["data", "cub", str(root), "--output", str(tmp_path / "desc.jsonl")]) == 0
    lines = [json.loads(line) for line in (tmp_path / "desc.jsonl").read_text().splitlines()]
    assert len(lines) == 4 and lines[0]["attribute"].startswith("a small bird")
    assert main(["data", "cub", str(root), "--output", str(tmp_path / "cub-ds")]) == 0
    saved = datasets.load_from_disk(str(tmp_path / "cub-ds"))
    assert saved["train"].num_rows == 2 and saved["test"].num_rows == 2
    (root / "images" / "002.Blue_Jay" / "img_2.jpg").unlink()
    assert main(["data", "cub", str(root), "--output", str(tmp_path / "cub-ds2")]) == 2
    assert "img_2.jpg" in capsys.readouterr().err


def test_csv_cli_reports_and_fails_with_one_line(tmp_path, image_root, capsys):
    from finedefics_cli import main

    good = write_csv(tmp_path / "good.csv", [row(), row(category="Blue Finch", image_path="birds/b.png")])
    assert main(["data", "csv", str(good), "--image-root", str(image_root), "--output", str(tmp_path / "ds")]) == 0
    assert "kept 2" in capsys.readouterr().out
    bad = write_csv(tmp_path / "bad.csv", [row(image_path="birds/broken.png")])
    assert main(["data", "csv", str(bad), "--image-root", str(image_root)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bad.csv, row 1 (line 2), field 'image_path'" in err[0]


# ============================================================================= stage II rows (finetune.csv)
CHOICES = "Which of these birds is shown in the image?\nChoices:\nA. Blue Finch\nB. Red Finch\nAnswer with the letter."


def stage_two_row(**cells):
    """A finetune.csv row: a question and an answer, no category, attribute or negatives."""
    return row(attribute="", category="", **cells)


def test_finetune_rows_get_the_category_their_recognition_answer_names(tmp_path, image_root):
    path = write_csv(tmp_path / "finetune.csv", [
        stage_two_row(question="What bird is this?", answer="red finch."),  # a known name, spelt loosely
        stage_two_row(question=CHOICES, answer="B"),  # the letter of a known name
        stage_two_row(question="Name the bird.", answer="Green Tit", type="open_set"),  # the type says so
        stage_two_row(question="What colour is its crown?", answer="red"),  # an instruction row
        stage_two_row(question="Same as before?", answer="Yes.", image_path=""),  # text only
    ])
    records = read_reference_csv(path, image_root, require_category=False,
                                 known_categories=["Red Finch", "Blue Finch"], allow_new_categories=True)
    assert [r["category"] for r in records] == ["Red Finch", "Red Finch", "Green Tit", None, None]
    assert [r["answer"] for r in records[:2]] == ["red finch.", "B"]  # answers are kept as given
    assert [r["label"] for r in records] == [1, 1, 0, None, None]
    report = records.report
    assert dict(report.kinds) == {"open-set": 2, "multiple choice": 1, "instruction": 2}
    assert report.notes["categories derived from recognition answers"] == 3
    assert report.notes[NEW_CATEGORIES] == 1  # "Green Tit": created, and counted
    assert "kept rows by kind: 2 open-set, 1 multiple choice, 2 instruction" in report.summary()
    # Without the known names, and with new categories allowed, the typed row and the multiple choice (its option
    # picked) are recognition questions; a name in free text is not.
    assert [r["category"] for r in read_reference_csv(path, image_root, require_category=False,
                                                      allow_new_categories=True)] == \
        [None, "Red Finch", "Green Tit", None, None]
    # Without the flag a category no list holds is refused, naming it, the first row and the flag.
    with pytest.raises(RecordError, match=r"1 categories that are not known \('Green Tit'; 1 rows\).*"
                                          r"--allow-new-categories") as error:
        read_reference_csv(path, image_root, require_category=False, known_categories=["Red Finch", "Blue Finch"])
    assert "row 3 (line" in str(error.value) and error.value.field == "answer"


def test_pretrain_rows_are_description_rows(tmp_path, image_root):
    path = write_csv(tmp_path / "pretrain.csv", [row(answer="a red bird with a cone bill.")])
    assert dict(read_reference_csv(path, image_root).report.kinds) == {"description": 1}


@pytest.mark.parametrize("cells, field, message", [
    (dict(question=CHOICES, answer="C", type="multiple-choice"), "answer", "letter is not one of the options: 'C'"),
    (dict(question="Name it.", answer="Red Finch", image_path=""), "image_path", "recognition question"),
    (dict(question="What colour is its crown?", answer="red"), "category", "not a recognition answer"),
])
def test_bad_stage_two_rows_name_file_row_and_field(tmp_path, image_root, cells, field, message):
    path = write_csv(tmp_path / "finetune.csv", [row(), stage_two_row(**cells)])
    with pytest.raises(RecordError, match=message) as error:
        read_reference_csv(path, image_root)  # require_category: an instruction row is an error here
    assert "finetune.csv, row 2 (line 3)" in str(error.value) and error.value.field == field


def test_csv_cli_reads_finetune_rows_with_known_categories_and_records_the_noun(tmp_path, image_root, capsys):
    import datasets

    from finedefics_cli import main
    from finedefics_data.schema import data_noun

    pretrain = write_csv(tmp_path / "pretrain.csv", [row(), row(category="Blue Finch", image_path="birds/b.png")])
    finetune = write_csv(tmp_path / "finetune.csv", [stage_two_row(question="What bird?", answer="Blue Finch"),
                                                     stage_two_row(question="Its crown?", answer="red")])
    out = tmp_path / "stage2"
    assert main(["data", "csv", str(finetune), "--image-root", str(image_root), "--categories", str(pretrain),
                 "--noun", "finch", "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.count("finetune.csv: read 2 rows, kept 2") == 1  # the summary, once
    assert "kept rows by kind: 1 open-set, 1 instruction" in printed and "object noun: finch" in printed
    assert datasets.load_from_disk(str(out))["train"]["category"] == ["Blue Finch", None]
    assert data_noun(out).plural == "finches"


def test_csv_cli_refuses_to_save_when_every_row_was_skipped(tmp_path, image_root, capsys):
    from finedefics_cli import main

    bad = write_csv(tmp_path / "bad.csv", [row(image_path="birds/broken.png"), row(image_path="birds/missing.png")])
    out = tmp_path / "never"
    assert main(["data", "csv", str(bad), "--image-root", str(image_root), "--skip-bad-rows", "--output",
                 str(out)]) == 2
    captured = capsys.readouterr()
    assert "read 2 rows, kept 0, skipped 2" in captured.out
    assert "none of its 2 rows was kept" in captured.err and not out.exists()


# ============================================================================= multiple choice as people write it
FINCHES = ["Blue Finch", "Red Finch", "Green Finch", "Grey Finch"]


def choice_question(options, style="{letter}. {option}", header=False, inline=False):
    items = [style.format(letter="ABCD"[i], option=option) for i, option in enumerate(options)]
    listed = " ".join(items) if inline else "\n".join(items)
    return ("Which finch is this?" + ("\nChoices:\n" if header else ("\n" if not inline else " ")) + listed
            + "\nAnswer with the letter and the name.")


def test_options_on_lines_without_a_header_answered_letter_dot_name(tmp_path, image_root):
    """The layout the reader used to misread: no Choices: line, answers "B. name" (B/C/D rows became instruction
    rows, and "A. name" was read as an open-set name whose "A." was dropped as an article)."""
    rows = [stage_two_row(question=choice_question(FINCHES), answer=f"{letter}. {FINCHES[i]}")
            for i, letter in enumerate("ABCD")]
    path = write_csv(tmp_path / "finetune.csv", rows)
    records = read_reference_csv(path, image_root, require_category=False, known_categories=FINCHES)
    assert [r["category"] for r in records] == FINCHES
    assert dict(records.report.kinds) == {"multiple choice": 4}
    assert records.report.notes[MC_READ] == 4


@pytest.mark.parametrize("style", ["{letter}. {option}", "{letter}) {option}", "({letter}) {option}"])
@pytest.mark.parametrize("header, inline", [(True, False), (False, False), (True, True), (False, True)])
def test_every_layout_and_answer_form_gives_the_picked_category(tmp_path, image_root, style, header, inline):
    question = choice_question(FINCHES, style, header, inline)
    answers = ["C", "C. Green Finch", "Green Finch", "(C)"]
    path = write_csv(tmp_path / "finetune.csv", [stage_two_row(question=question, answer=a) for a in answers])
    records = read_reference_csv(path, image_root, require_category=False, known_categories=FINCHES)
    assert [r["category"] for r in records] == ["Green Finch"] * 4
    assert [r["answer"] for r in records] == answers  # answers are trained as given
    assert dict(records.report.kinds) == {"multiple choice": 4}


def test_multiple_choice_rows_not_read_are_counted_by_reason(tmp_path, image_root):
    path = write_csv(tmp_path / "finetune.csv", [
        stage_two_row(question=choice_question(FINCHES), answer="B. Grey Finch"),  # letter and name disagree
        stage_two_row(question=choice_question(FINCHES), answer="E"),  # no such option
        stage_two_row(question=choice_question(FINCHES), answer="I am not sure"),
        stage_two_row(question="Which finch is it, in the list above?", answer="B"),  # options not found
        stage_two_row(question=choice_question(["red", "blue"]), answer="A"),  # an attribute question
        stage_two_row(question=choice_question(FINCHES), answer="D"),  # read
    ])
    records = read_reference_csv(path, image_root, require_category=False, known_categories=FINCHES)
    assert [r["category"] for r in records] == [None] * 5 + ["Grey Finch"]
    notes = records.report.notes
    for reason in (LETTER_AND_NAME_DISAGREE, NOT_AN_OPTION_LETTER, NAMES_NO_OPTION, NO_OPTIONS_FOUND,
                   NO_KNOWN_OPTION):
        assert notes[MC_NOT_READ.format(reason)] == 1, reason
    assert notes[MC_READ] == 1
    summary = records.report.summary()
    assert f"multiple-choice rows not read as recognition ({LETTER_AND_NAME_DISAGREE}): 1" in summary


def test_a_typed_multiple_choice_that_picks_nothing_is_a_named_error(tmp_path, image_root):
    path = write_csv(tmp_path / "finetune.csv", [
        stage_two_row(question="Which finch, of those listed before?", answer="B", type="multiple-choice")])
    with pytest.raises(RecordError, match="no options in a known layout") as error:
        read_reference_csv(path, image_root, require_category=False)
    assert "row 1 (line 2)" in str(error.value) and error.value.field == "answer"


def test_unknown_picked_options_are_listed_and_refused_unless_allowed(tmp_path, image_root):
    names = [f"Finch {i}" for i in range(8)]
    rows = [stage_two_row(question=choice_question(["Red Finch", name]), answer="B") for name in names]
    path = write_csv(tmp_path / "finetune.csv", [stage_two_row(question="What bird?", answer="Red Finch"), *rows])
    with pytest.raises(RecordError) as error:
        read_reference_csv(path, image_root, require_category=False, known_categories=["Red Finch"])
    message = str(error.value)
    assert "8 categories that are not known ('Finch 0', 'Finch 1', 'Finch 2', 'Finch 3', 'Finch 4' and 3 more" \
        in message and "row 2 (line 3)" in message and "--allow-new-categories" in message
    records = read_reference_csv(path, image_root, require_category=False, known_categories=["Red Finch"],
                                 allow_new_categories=True)
    assert [r["category"] for r in records] == ["Red Finch", *names]
    assert records.report.notes[NEW_CATEGORIES] == 8


def test_a_row_whose_answer_picks_another_option_than_its_category_is_refused(tmp_path, image_root):
    path = write_csv(tmp_path / "train.csv", [row(question=choice_question(FINCHES), answer="A")])  # Blue, not Red
    with pytest.raises(RecordError, match="picks option A 'Blue Finch', but the row's category is 'Red Finch'"):
        read_reference_csv(path, image_root)


def test_stage_one_rows_are_description_rows_whatever_the_answers_wording(tmp_path, image_root):
    path = write_csv(tmp_path / "pretrain.csv", [
        row(answer="a red bird with a cone bill."),  # the attribute cell's words
        row(answer="This finch is red, with a cone-shaped bill."),  # other words
        row(answer="Red Finch"),  # names its category: an open-set row
    ])
    records = read_reference_csv(path, image_root)
    assert dict(records.report.kinds) == {"description": 2, "open-set": 1}
    assert records.report.notes[DESCRIPTION_REWORDED] == 1


def test_csv_cli_allow_new_categories_and_the_hint_when_no_option_is_known(tmp_path, image_root, capsys):
    from finedefics_cli import main

    path = write_csv(tmp_path / "finetune.csv", [stage_two_row(question=choice_question(FINCHES), answer="B")])
    assert main(["data", "csv", str(path), "--image-root", str(image_root)]) == 0
    printed = capsys.readouterr().out
    assert "1 multiple-choice rows have no known category among their options" in printed
    assert "--categories" in printed and "--allow-new-categories" in printed
    assert main(["data", "csv", str(path), "--image-root", str(image_root), "--allow-new-categories",
                 "--output", str(tmp_path / "ds")]) == 0
    assert "kept rows by kind: 1 multiple choice" in capsys.readouterr().out
