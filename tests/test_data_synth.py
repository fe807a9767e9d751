"""The synthetic fine-grained benchmark: determinism, splits, descriptions that match the drawing,
siblings that differ in one or two attributes, occlusion that really hides, and the output formats."""

import csv
import hashlib
import itertools
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from finedefics_data import synth
from finedefics_data.synth import ATTRIBUTES, OCCLUDABLE, SynthConfig, draw_bird, generate_benchmark

SMALL = SynthConfig(num_genera=3, species_per_genus=3, train_per_category=6, rare_train_per_category=2,
                    rare_fraction=0.34, validation_per_category=2, test_per_category=3, seed=7, occlusion_prob=0.3)

# How a description must mention each attribute value: written here independently of the generator's
# phrase table, so a wrong phrase in the generator fails the test.
MENTION = {
    "build": r"\b{v}\b",
    "plumage": r"\b{v} plumage\b",
    "wing_color": r"\b{v} wings\b",
    "wing_pattern": r"\b{v} \w+ wings\b",
    "breast": r"\b{v} breast\b",
    "beak": r"\b{v}\b(?: \w+)? beak\b",
    "tail": r"\b{v} tail\b",
    "crest": r"\b{v} head\b",
    "eye": r"\b{v} eyes\b",
}


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    return generate_benchmark(tmp_path_factory.mktemp("synth") / "bench", SMALL, progress=False)


def _metadata(folder: Path, split: str) -> list[dict]:
    return [json.loads(line) for line in (folder / split / "metadata.jsonl").read_text().splitlines()]


def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_and_other_seed_differs(bench, tmp_path):
    again = generate_benchmark(tmp_path / "again", SMALL, progress=False)
    assert _files(again) == _files(bench)
    other = generate_benchmark(tmp_path / "other", SynthConfig(**{**SMALL.__dict__, "seed": 8}), progress=False)
    assert _files(other)["train/000-0000.png"] != _files(bench)["train/000-0000.png"]


def test_split_sizes_long_tail_and_every_category_in_test(bench):
    categories = synth.load_categories(bench)
    train, test = _metadata(bench, "train"), _metadata(bench, "test")
    assert len(categories) == SMALL.num_categories
    rare = [c for c in categories if c["is_rare"]]
    assert len(rare) == round(SMALL.rare_fraction * SMALL.num_categories)
    train_counts = {c["name"]: 0 for c in categories}
    for row in train:
        train_counts[row["category"]] += 1
    for category in categories:
        expected = SMALL.rare_train_per_category if category["is_rare"] else SMALL.train_per_category
        assert train_counts[category["name"]] == expected == category["n_train"]
    assert {row["category"] for row in test} == {c["name"] for c in categories}
    assert all(sum(r["category"] == c["name"] for r in test) == SMALL.test_per_category for c in categories)


def test_no_image_shared_between_train_and_test(bench):
    def pixel_hashes(split):
        return {hashlib.sha1(np.asarray(Image.open(bench / split / r["file_name"])).tobytes()).hexdigest()
                for r in _metadata(bench, split)}

    train, test = pixel_hashes("train"), pixel_hashes("test")
    assert len(train) == len(_metadata(bench, "train")) and len(test) == len(_metadata(bench, "test"))
    assert not train & test


def test_descriptions_match_the_drawn_attributes(bench):
    rows = _metadata(bench, "train") + _metadata(bench, "test")
    occluded_seen = 0
    for row in rows:
        visible = json.loads(row["attributes"])
        text = row["attribute"].lower()
        for name, values in ATTRIBUTES.items():
            for value in values:
                mentioned = re.search(MENTION[name].format(v=value), text) is not None
                assert mentioned == (visible.get(name) == value), (name, value, row["attribute"])
        hidden = set(ATTRIBUTES) - set(visible)
        assert hidden <= set(OCCLUDABLE) and len(hidden) <= 1
        occluded_seen += bool(hidden)
        category = next(c for c in synth.load_categories(bench) if c["name"] == row["category"])
        assert all(category["attributes"][k] == v for k, v in visible.items())
    assert occluded_seen > 0  # occlusion_prob=0.3 over ~70 images


@pytest.mark.parametrize("config", [SMALL, SynthConfig()], ids=["small", "default"])
def test_siblings_differ_in_one_or_two_attributes_and_genera_are_distinct(config):
    categories = synth.build_categories(config)
    for a, b in itertools.combinations(categories, 2):
        differing = sum(a["attributes"][k] != b["attributes"][k] for k in ATTRIBUTES)
        if a["genus"] == b["genus"]:
            assert 1 <= differing <= 2, (a["name"], b["name"])
            assert b["name"] in a["siblings"]
        else:  # other genera: another plumage colour and type species >= 4 part attributes apart
            assert differing >= 3, (a["name"], b["name"])
            assert a["attributes"]["plumage"] != b["attributes"]["plumage"]


def test_names_do_not_spell_out_attributes(bench):
    words = {v for values in ATTRIBUTES.values() for v in values} | {"wing", "tail", "beak", "crest", "eye"}
    for category in synth.load_categories(bench):
        assert not any(w in category["name"].lower() for w in words), category["name"]


def test_hard_negatives_are_siblings_first(bench):
    categories = {c["name"]: c for c in synth.load_categories(bench)}
    for row in _metadata(bench, "train"):
        siblings = categories[row["category"]]["siblings"]
        assert set(row["neg_categories"][: len(siblings)]) == set(siblings)
        assert row["category"] not in row["neg_categories"]
        assert row["neg_attributes"] == [categories[n]["description"] for n in row["neg_categories"]]


@pytest.mark.parametrize("part", OCCLUDABLE)
def test_occlusion_hides_every_value_of_the_part(part):
    base = {name: values[0] for name, values in ATTRIBUTES.items()}
    base["wing_color"], base["breast"] = "black", "white"
    variants = [{**base, part: value} for value in ATTRIBUTES[part] if _allowed(part, value)]
    for seed in range(6):
        hidden = [np.asarray(draw_bird(v, np.random.default_rng(seed), occluded=part)) for v in variants]
        shown = [np.asarray(draw_bird(v, np.random.default_rng(seed))) for v in variants]
        assert all(np.array_equal(hidden[0], h) for h in hidden[1:]), (part, seed)
        assert not any(np.array_equal(shown[0], s) for s in shown[1:]), (part, seed)


def _allowed(part, value):
    return not (part == "breast" and value == "red")  # red plumage in `base`: a red breast would be invisible


def test_load_synthetic_dataset_columns_and_imagefolder(bench):
    import datasets

    splits = synth.load_synthetic_dataset(bench)
    assert set(splits) == {"train", "validation", "test"}
    assert splits["validation"].num_rows == SMALL.validation_per_category * SMALL.num_categories
    row = splits["train"][0]
    assert set(row) == {"image", "category", "label", "attribute", "attributes", "neg_categories", "neg_attributes",
                        "genus", "is_rare"}
    assert row["image"].size == (SMALL.image_size, SMALL.image_size)
    assert isinstance(row["neg_categories"], list) and isinstance(json.loads(row["attributes"]), dict)
    names = sorted(c["name"] for c in synth.load_categories(bench))
    assert all(names[r["label"]] == r["category"] for r in splits["test"])
    plain = datasets.load_dataset("imagefolder", data_dir=str(bench))
    assert plain["test"].num_rows == splits["test"].num_rows


def test_foci_options_and_reference_csv(bench):
    from finedefics_data.readers import read_reference_csv

    foci = json.loads((bench / "foci_test.json").read_text())
    categories = {c["name"]: c for c in synth.load_categories(bench)}
    assert set(foci) == set(categories)
    for name, examples in foci.items():
        for example in examples:
            assert example["groundtruth"] == name == example["options"][0]
            assert len(set(example["options"])) == 4
            assert example["options"][1:] == categories[name]["negatives"][:3]
            assert (bench / example["image"]).is_file()
    records = read_reference_csv(bench / "train_reference.csv", image_root=bench)
    train = _metadata(bench, "train")
    assert [(r["category"], r["attribute"], r["neg_categories"], r["neg_attributes"]) for r in records] == \
           [(m["category"], m["attribute"], m["neg_categories"], m["neg_attributes"]) for m in train]
    with open(bench / "train_reference.csv", newline="", encoding="utf-8") as handle:
        assert "\t\n" in next(csv.DictReader(handle))["neg_category"]


def test_text_corpus_covers_names_descriptions_and_prompts(bench):
    corpus = synth.text_corpus(bench)
    text = "\n".join(corpus)
    for category in synth.load_categories(bench):
        assert category["name"] in corpus and category["description"] in corpus
    assert all(row["attribute"] in corpus for row in _metadata(bench, "test"))
    assert "Which of these birds is shown in the image?" in text
    assert len(corpus) == len(set(corpus))


def test_config_and_output_folder_errors(bench, tmp_path):
    with pytest.raises(ValueError, match="species_per_genus"):
        SynthConfig(species_per_genus=1)
    with pytest.raises(ValueError, match="rare_fraction"):
        SynthConfig(rare_fraction=1.5)
    with pytest.raises(ValueError, match="not empty"):
        generate_benchmark(bench, SMALL, progress=False)
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "keep.txt").write_text("mine")
    with pytest.raises(ValueError, match="not a synthetic benchmark"):
        generate_benchmark(tmp_path / "notes", SMALL, progress=False, overwrite=True)
    assert (tmp_path / "notes" / "keep.txt").read_text() == "mine"
    with pytest.raises(FileNotFoundError, match="categories.json"):
        synth.load_synthetic_dataset(tmp_path / "notes")


def test_broken_metadata_row_is_reported_with_file_and_line(bench, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(bench, copy)
    lines = (copy / "test" / "metadata.jsonl").read_text().splitlines()
    row = json.loads(lines[2])
    row["neg_categories"] = [row["category"]] + row["neg_categories"][1:]
    lines[2] = json.dumps(row)
    (copy / "test" / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"test/metadata.jsonl, row line 3, field 'neg_categories'.*itself"):
        synth.load_synthetic_dataset(copy)


def test_defaults_fit_the_cpu_demo():
    config = SynthConfig()
    assert config.image_size == 64 and 24 <= config.num_categories <= 32 and 6 <= config.num_genera <= 8
    assert 30 <= config.train_per_category <= 40
    # 40 test images per species: a 5-point accuracy gap is outside the noise (+-2.5 points per model).
    assert config.test_per_category >= 40 and 5 <= config.validation_per_category < config.test_per_category
    assert config.num_rare / config.num_categories == pytest.approx(0.25, abs=0.04)


def test_cli_synth_with_preview(tmp_path, capsys):
    from finedefics_cli import main

    out, picture = tmp_path / "cli-bench", tmp_path / "sheet.png"
    assert main(["data", "synth", str(out), "--num-genera", "2", "--species-per-genus", "3",
                 "--train-per-category", "3", "--rare-train-per-category", "1", "--test-per-category", "2",
                 "--preview", str(picture), "--no-progress"]) == 0
    assert "6 species" in capsys.readouterr().out
    sheet = Image.open(picture)
    assert sheet.width > 4 * 2 * 64 and sheet.height > 6 * 2 * 64  # 6 rows of enlarged images
    assert main(["data", "synth", str(out), "--no-progress"]) == 2  # exists: a clear error, not a traceback
    assert "not empty" in capsys.readouterr().err


def test_benchmark_rows_feed_the_training_collator(bench):
    from finedefics_training.collator import FinedeficsDataCollator
    from modeling_finedefics.tiny import build_tiny_processor, build_tiny_tokenizer

    processor = build_tiny_processor(build_tiny_tokenizer(synth.text_corpus(bench)))
    rows = [synth.load_synthetic_dataset(bench)["train"][i] for i in range(4)]
    batch = FinedeficsDataCollator(processor, stage=1, num_negatives=SMALL.num_negatives)(rows)
    assert batch["pixel_values"].shape[0] == 4
    assert (batch["attribute_index"] >= 0).all() and (batch["neg_category_index"] >= 0).all()
    # Stage I answers are the rows' own descriptions.
    answers = [processor.tokenizer.decode(ids[labels != -100], skip_special_tokens=True).strip()
               for ids, labels in zip(batch["input_ids"], batch["labels"])]
    assert answers == [row["attribute"] for row in rows]


def test_validation_images_are_new_draws_of_the_training_distribution(bench):
    train, validation = _files(bench / "train"), _files(bench / "validation")
    assert not set(train.values()) & set(validation.values())
    rows = _metadata(bench, "validation")
    categories = {c["name"]: c for c in synth.load_categories(bench)}
    assert all(len([r for r in rows if r["category"] == name]) == SMALL.validation_per_category for name in categories)
    assert all(categories[r["category"]]["n_validation"] == SMALL.validation_per_category for r in rows)


@pytest.mark.parametrize("template", range(len(synth.TEMPLATES)))
def test_parse_description_reads_back_every_template_and_hidden_part(template):
    rng = np.random.default_rng(template)
    for _ in range(300):
        attributes = synth.random_attributes(rng)
        hidden = OCCLUDABLE[rng.integers(len(OCCLUDABLE))] if rng.random() < 0.4 else None
        visible = {k: v for k, v in attributes.items() if k != hidden}
        assert synth.parse_description(synth.describe(visible, template=template, rng=rng)) == visible


def test_parse_description_ignores_words_outside_the_vocabulary():
    assert synth.parse_description("A purple bird with a long thin beak, big wings and a forked tail.") == \
        {"beak": "long", "tail": "forked"}
    assert synth.parse_description("") == {}


def test_attribute_pool_is_deterministic_species_free_and_varied():
    config = SynthConfig(seed=3)
    first = [synth.pool_sample(i, config) for i in range(200)]
    again = synth.pool_sample(17, config)
    assert np.array_equal(np.asarray(again[0]), np.asarray(first[17][0])) and again[1:] == first[17][1:]
    # Random values: every value of every attribute shows up, in combinations no genus rule ties together.
    for name, values in ATTRIBUTES.items():
        seen = {visible[name] for _, visible, _ in first if name in visible}
        assert seen == set(values), name
    assert all(visible["wing_color"] != visible["plumage"] for _, visible, _ in first)
    assert all(synth.parse_description(description) == visible for _, visible, description in first)


def test_distinguishing_attributes_are_where_siblings_differ():
    categories = synth.build_categories(SMALL)
    for category in categories:
        siblings = [c for c in categories if c["genus"] == category["genus"] and c is not category]
        differing = synth.distinguishing_attributes(category, categories)
        assert differing and set(differing) <= set(synth.SPECIES_ATTRIBUTES)
        for sibling in siblings:
            assert any(sibling["attributes"][name] != category["attributes"][name] for name in differing)
