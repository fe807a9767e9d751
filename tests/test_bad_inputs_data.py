"""Bad data and image inputs, fed through the real entry points: ``finedefics data csv``, the processor's
image loading, the evaluation benchmarks and runner, the training data path, ``model.classify`` and
``finedefics data synth``.

Each bad input must end as an error naming the file (and row, field or entry), or as a skipped and
counted row or image where the caller asked to go on; nothing is silently changed or dropped.
"""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from finedefics_cli import main
from finedefics_data.readers import NEGATIVES_WITH_LIST_PUNCTUATION
from finedefics_data.synth import REFERENCE_COLUMNS

NEG = "\t\n"  # the reference format's separator of several negatives in one cell
CATEGORIES = ["Corvane Sprite", "Halden Rook", "Ostra Vela"]


# ----------------------------------------------------------------------------- helpers
@pytest.fixture
def image_root(tmp_path):
    root = tmp_path / "images"
    root.mkdir()
    for index, colour in enumerate(["red", "blue", "green"]):
        Image.new("RGB", (16, 16), colour).save(root / f"{index}.png")
    return root


def csv_row(**cells) -> dict:
    base = {c: "" for c in REFERENCE_COLUMNS}
    base.update(question="Describe the car.", answer="a red car.", type="single-image", image_path="0.png",
                attribute="a red car.", category="Corvane Sprite",
                neg_category=NEG.join(CATEGORIES[1:]), neg_attribute=NEG.join(["a blue car.", "a green car."]))
    base.update(cells)
    return base


def write_csv(path: Path, rows, columns=REFERENCE_COLUMNS) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        for row in rows:
            writer.writerow([row.get(column, "") for column in columns])
    return path


def other_rows() -> list[dict]:
    """Rows that make every name of CATEGORIES a known category of the file."""
    return [csv_row(category="Halden Rook", image_path="1.png", neg_category="Ostra Vela",
                    neg_attribute="a green car."),
            csv_row(category="Ostra Vela", image_path="2.png", neg_category="Halden Rook",
                    neg_attribute="a blue car.")]


def data_csv(capsys, csv_path, image_root, *options) -> tuple[int, str, str]:
    code = main(["data", "csv", str(csv_path), "--image-root", str(image_root), *options])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def truncated_png(path: Path, size=(64, 64)) -> Path:
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(path)  # noise: compresses badly
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


# ============================================================================= finedefics data csv
@pytest.mark.parametrize("wrong_separator", [", ", ";", "\n", "\t"], ids=["comma", "semicolon", "newline", "tab"])
def test_negatives_joined_by_another_separator_are_refused_naming_file_row_and_field(
        tmp_path, image_root, capsys, wrong_separator):
    bad = write_csv(tmp_path / "pretrain.csv", [*other_rows(), csv_row(
        neg_category=wrong_separator.join(CATEGORIES[1:]), neg_attribute="a blue car.")])
    code, _, err = data_csv(capsys, bad, image_root)
    assert code == 2
    assert "pretrain.csv, row 3 (line 4), field 'neg_category'" in err
    assert "tab and a newline" in err

    code, out, _ = data_csv(capsys, bad, image_root, "--skip-bad-rows")
    assert code == 0 and "read 3 rows, kept 2, skipped 1" in out and "rows 3" in out


def test_a_negative_whose_known_name_holds_a_comma_is_kept(tmp_path, image_root, capsys):
    names = tmp_path / "names.txt"
    names.write_text("Corvane Sprite\nHalden Rook, Estate\nHalden Rook\nEstate\n", encoding="utf-8")
    good = write_csv(tmp_path / "pretrain.csv",
                     [csv_row(neg_category="Halden Rook, Estate", neg_attribute="a blue car.")])
    code, out, err = data_csv(capsys, good, image_root, "--categories", str(names), "--output", str(tmp_path / "ds"))
    assert code == 0, err
    import datasets

    assert datasets.load_from_disk(str(tmp_path / "ds"))["train"][0]["neg_categories"] == ["Halden Rook, Estate"]


def test_an_unknown_negative_holding_a_comma_is_kept_and_reported(tmp_path, image_root, capsys):
    good = write_csv(tmp_path / "pretrain.csv", [csv_row(neg_category="Mirel, Finch", neg_attribute="a blue car.")])
    code, out, err = data_csv(capsys, good, image_root)
    assert code == 0, err
    assert f"{NEGATIVES_WITH_LIST_PUNCTUATION}: 1" in out


def test_a_duplicated_column_name_is_refused_naming_file_and_column(tmp_path, image_root, capsys):
    columns = (*REFERENCE_COLUMNS, "category")
    bad = write_csv(tmp_path / "dup.csv", [{**csv_row()}], columns=columns)
    code, _, err = data_csv(capsys, bad, image_root)
    assert code == 2
    assert "dup.csv, field 'category'" in err and "more than once" in err


def test_a_two_megabyte_cell_is_a_named_error_not_a_csv_traceback(tmp_path, image_root, capsys):
    huge = "a red car with " + "very " * 400_000 + "shiny wheels."
    bad = write_csv(tmp_path / "huge.csv", [csv_row(), csv_row(attribute=huge, answer=huge)])
    code, _, err = data_csv(capsys, bad, image_root)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "huge.csv, row 2 (line 5)" in err and "characters" in err  # row 1's negatives span lines 2-4


def test_a_one_pixel_image_is_refused_by_data_csv_naming_file_row_and_field(tmp_path, image_root, capsys):
    Image.new("RGB", (1, 1), "red").save(image_root / "dot.png")
    bad = write_csv(tmp_path / "dot.csv", [csv_row(image_path="dot.png")])
    code, _, err = data_csv(capsys, bad, image_root)
    assert code == 2
    assert "dot.csv, row 1 (line 2), field 'image_path'" in err and "1x1 pixels" in err


def test_a_decompression_bomb_is_a_counted_skip_in_data_csv(tmp_path, image_root, capsys, monkeypatch):
    Image.new("RGB", (64, 64), "red").save(image_root / "bomb.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 64x64 > 2x the limit; the 16x16 images are under it
    rows = write_csv(tmp_path / "bomb.csv", [csv_row(image_path="bomb.png"), *other_rows()])
    code, _, err = data_csv(capsys, rows, image_root)
    assert code == 2 and "bomb.csv, row 1 (line 2), field 'image_path'" in err and "bomb.png" in err
    code, out, _ = data_csv(capsys, rows, image_root, "--skip-bad-rows")
    assert code == 0 and "read 3 rows, kept 2, skipped 1" in out and "bomb.png" in out


@pytest.mark.parametrize("escaping", ["../outside.png", "sub/../../outside.png", "ABSOLUTE"])
def test_a_csv_image_path_outside_the_image_root_is_refused_unless_allowed(tmp_path, image_root, capsys, escaping):
    Image.new("RGB", (16, 16), "red").save(tmp_path / "outside.png")
    (image_root / "sub").mkdir()
    escaping = str(tmp_path / "outside.png") if escaping == "ABSOLUTE" else escaping
    bad = write_csv(tmp_path / "escape.csv", [csv_row(image_path=escaping)])
    code, _, err = data_csv(capsys, bad, image_root)
    assert code == 2
    assert "escape.csv, row 1 (line 2), field 'image_path'" in err and "outside the image root" in err
    code, _, err = data_csv(capsys, bad, image_root, "--allow-images-outside-root")
    assert code == 0, err


# ============================================================================= processor image loading
def test_a_sixteen_bit_png_is_scaled_to_eight_bits(tmp_path, tiny_processor):
    values = np.array([[0, 257, 7196, 32896], [40000, 50000, 65278, 65535]], dtype=np.uint16)
    path = tmp_path / "depth.png"
    Image.fromarray(np.repeat(np.repeat(values, 4, axis=0), 4, axis=1)).save(path)
    assert Image.open(path).mode == "I;16"
    image = tiny_processor.load_image(str(path))
    assert image.mode == "RGB"
    red = np.asarray(image)[::4, ::4, 0]
    np.testing.assert_array_equal(red, np.round(values / 257).astype(np.uint8))


def test_a_32_bit_integer_image_holding_sixteen_bit_values_is_scaled_too(tiny_processor):
    values = np.array([[0, 7196], [32896, 65535]], dtype=np.int32)
    image = tiny_processor.load_image(Image.fromarray(np.kron(values, np.ones((2, 2), dtype=np.int32))))
    assert image.getpixel((2, 2)) == (255, 255, 255) and image.getpixel((2, 0)) == (28, 28, 28)


def test_a_decompression_bomb_is_a_value_error_naming_the_file(tmp_path, tiny_processor, monkeypatch):
    Image.new("RGB", (64, 64), "red").save(tmp_path / "bomb.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(ValueError, match="bomb.png.*too many pixels"):
        tiny_processor.load_image(str(tmp_path / "bomb.png"))


# ============================================================================= evaluation
@pytest.fixture
def option_benchmark(tmp_path):
    from eval_helpers import write_option_benchmark

    return write_option_benchmark(tmp_path / "bench", per_category=1, labels=["Corvel Tit", "Mirel Finch",
                                                                               "Velmoran Thistlewing", "Tarrow Tit"])


def _replace_first_image(option_file: Path, image: Image.Image) -> str:
    first = next(iter(json.loads(option_file.read_text(encoding="utf-8")).values()))[0]["image"]
    image.save(option_file.parent / first)
    return first


def _shrink_images(option_file: Path) -> None:
    for path in (option_file.parent / "images").glob("*.png"):
        Image.open(path).resize((16, 16)).save(path)


@pytest.mark.parametrize("bad_image", ["one pixel", "bomb"])
def test_eval_skips_and_counts_a_one_pixel_image_or_a_bomb(option_benchmark, micro_model, tiny_processor,
                                                          monkeypatch, bad_image):
    from finedefics_eval import evaluate_model, load_benchmark

    _shrink_images(option_benchmark)
    if bad_image == "bomb":
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
        bad = _replace_first_image(option_benchmark, Image.new("RGB", (64, 64), "red"))
    else:
        bad = _replace_first_image(option_benchmark, Image.new("RGB", (1, 1), "red"))
    benchmark = load_benchmark(str(option_benchmark))
    report = evaluate_model(micro_model, tiny_processor, benchmark, modes=("embedding",), bootstrap_samples=0,
                            progress=False)
    assert report["n"] == 4 and report["n_scored"] == 3
    assert report["skipped"]["unreadable_images"] == 1 and report["skipped"]["examples"] == [bad]


@pytest.mark.parametrize("escaping", ["../outside.png", "images/../../outside.png", "ABSOLUTE"])
def test_an_option_file_image_outside_the_image_root_is_refused_unless_allowed(option_benchmark, escaping):
    from finedefics_eval import load_benchmark

    outside = option_benchmark.parent.parent / "outside.png"
    Image.new("RGB", (16, 16), "red").save(outside)
    escaping = str(outside) if escaping == "ABSOLUTE" else escaping
    data = json.loads(option_benchmark.read_text(encoding="utf-8"))
    label = next(iter(data))
    data[label][0]["image"] = escaping
    option_benchmark.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(ValueError,
                       match=rf"options\.json: label '{label}', example 0: field 'image'.*outside the image root"):
        load_benchmark(str(option_benchmark))
    benchmark = load_benchmark(str(option_benchmark), allow_images_outside_root=True)
    assert benchmark.load_image(benchmark.examples[0]).size == (16, 16)


def test_an_imagefolder_metadata_image_outside_its_folder_is_refused_unless_allowed(tmp_path):
    from finedefics_eval import load_benchmark

    split = tmp_path / "folder" / "test"
    split.mkdir(parents=True)
    names = ["Corvel Tit", "Mirel Finch", "Tarrow Tit", "Velmoran Thistlewing"]
    rows = [{"file_name": f"{i}.png", "category": name} for i, name in enumerate(names)]
    rows[2]["file_name"] = "../../outside.png"
    for row in rows:
        Image.new("RGB", (16, 16), "red").save(split / row["file_name"])
    (split / "metadata.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    with pytest.raises(ValueError, match=r"metadata\.jsonl: row 2: field 'file_name'.*outside the image root"):
        load_benchmark(str(tmp_path / "folder"))
    assert len(load_benchmark(str(tmp_path / "folder"), allow_images_outside_root=True)) == 4


def test_eval_command_refuses_an_escaping_image_path_in_one_line(option_benchmark, micro_checkpoint, tmp_path, capsys):
    data = json.loads(option_benchmark.read_text(encoding="utf-8"))
    next(iter(data.values()))[0]["image"] = "../../secret.png"
    option_benchmark.write_text(json.dumps(data), encoding="utf-8")
    code = main(["eval", "--model", str(micro_checkpoint), "--benchmark", str(option_benchmark), "--mode", "embedding",
                 "--output-dir", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "options.json" in err and "outside the image root" in err
    assert "--allow-images-outside-root" in err


# ============================================================================= training data path
def test_a_truncated_image_after_no_check_images_stops_training_naming_the_image(
        tmp_path, image_root, micro_checkpoint, capsys):
    import yaml

    truncated_png(image_root / "cut.png")
    rows = [csv_row(image_path="cut.png"), *other_rows()]
    data = tmp_path / "data"
    code, _, err = data_csv(capsys, write_csv(tmp_path / "pretrain.csv", rows), image_root, "--no-check-images",
                            "--output", str(data))
    assert code == 0, err
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(dict(
        model_name_or_path=str(micro_checkpoint), dataset_dir=str(data), output_dir=str(tmp_path / "run"), stage=1,
        max_steps=1, tuning="full", per_device_train_batch_size=3, save_strategy="no", report_to="none",
        use_cpu=True, seed=0, num_negatives=2, dataloader_num_workers=0, disable_tqdm=True)))
    code = main(["train", "--config", str(recipe)])
    err = capsys.readouterr().err
    assert code == 2 and "cut.png" in err and "truncated" in err
    assert "Traceback" not in err


# ============================================================================= model.classify
def test_classify_names_a_truncated_image_file(tmp_path, micro_model, tiny_processor):
    path = truncated_png(tmp_path / "cut.png")
    with pytest.raises(ValueError, match="cut.png.*truncated"):
        micro_model.classify([str(path)], CATEGORIES, tiny_processor)


def test_classify_refuses_a_one_pixel_image_like_the_processor(tmp_path, micro_model, tiny_processor):
    Image.new("RGB", (1, 1), "red").save(tmp_path / "dot.png")
    with pytest.raises(ValueError, match="dot.png is 1x1 pixels"):
        micro_model.classify([str(tmp_path / "dot.png")], CATEGORIES, tiny_processor)
    with pytest.raises(ValueError, match="1x1 pixels"):
        micro_model.classify(Image.new("RGB", (1, 1), "red"), CATEGORIES, tiny_processor)


# ============================================================================= finedefics data synth
def test_a_synth_run_killed_midway_leaves_no_hidden_folder_after_the_next_run(tmp_path):
    output = tmp_path / "synth"
    command = [sys.executable, "-m", "finedefics_cli", "data", "synth", str(output), "--no-progress",
               "--num-genera", "4", "--train-per-category", "40"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not any(p.name.startswith(".synth") for p in tmp_path.iterdir()):
        assert process.poll() is None, process.stderr.read().decode()[-2000:]
        assert time.monotonic() < deadline, "the staging folder never appeared"
        time.sleep(0.05)
    time.sleep(0.5)  # drawing images
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".synth")], "nothing left to clean: test is void"

    assert main(["data", "synth", str(output), "--no-progress", "--num-genera", "2", "--species-per-genus", "2",
                 "--train-per-category", "2", "--rare-train-per-category", "1", "--test-per-category", "1"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["synth"]


def test_synth_keeps_the_hidden_folder_of_a_run_still_going(tmp_path):
    from finedefics_data.synth import _StagingLock

    live = tmp_path / ".synth-still-drawing"
    live.mkdir()
    lock = _StagingLock(live)  # held, as by a run in another process
    try:
        assert main(["data", "synth", str(tmp_path / "synth"), "--no-progress", "--num-genera", "2",
                     "--species-per-genus", "2", "--train-per-category", "2", "--rare-train-per-category", "1",
                     "--test-per-category", "1"]) == 0
        assert live.is_dir() and (live / _StagingLock.FILE_NAME).is_file()
    finally:
        lock.release()
