"""Benchmark loading: FOCI's six datasets with a user image root, the synthetic benchmark, imagefolders and
`datasets` datasets with hard-negative options, and clear errors for bad or empty input."""

import json

import pytest
from eval_helpers import BIRDS, COLOURS, small_synthetic_benchmark
from PIL import Image

from finedefics_eval.benchmarks import hard_negatives_by_name, load_benchmark


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    return small_synthetic_benchmark(tmp_path_factory.mktemp("synthetic") / "synth")


def test_foci_dataset_reads_the_shipped_option_file_with_the_users_image_root(tmp_path):
    (tmp_path / "images" / "001.Black_footed_Albatross").mkdir(parents=True)
    present = "images/001.Black_footed_Albatross/Black_Footed_Albatross_0046_18.jpg"
    Image.new("RGB", (8, 8), "grey").save(tmp_path / present)
    bench = load_benchmark("bird-200", image_root=tmp_path)
    assert (len(bench), len(bench.categories)) == (5794, 200)
    assert bench.query == "Which of these birds is shown in the image?"
    assert bench.display_name == "CUB-200-2011" and bench.rare_categories is None
    missing = bench.missing_images()
    assert len(missing) == 5793 and present not in {e.image for e in missing}
    assert bench.load_image(bench.examples[0]).mode == "RGB"


def test_foci_max_per_label_and_limit_keep_the_first_examples(tmp_path):
    assert len(load_benchmark("pet-37", image_root=tmp_path, max_per_label=2)) == 74
    assert [e.example_id for e in load_benchmark("pet-37", image_root=tmp_path, limit=3).examples] == ["0", "1", "2"]


def test_foci_needs_an_existing_image_root_and_a_known_name(tmp_path):
    with pytest.raises(ValueError, match="needs --image-root"):
        load_benchmark("car-196")
    with pytest.raises(FileNotFoundError, match="image root not found"):
        load_benchmark("car-196", image_root=tmp_path / "nowhere")
    with pytest.raises(ValueError, match="unknown FOCI dataset 'car-197'"):
        load_benchmark("foci:car-197", image_root=tmp_path)


def test_synthetic_benchmark_uses_its_foci_options_and_rare_categories(synthetic):
    categories = json.loads((synthetic / "categories.json").read_text(encoding="utf-8"))
    bench = load_benchmark(str(synthetic))
    assert bench.query == "Which of these birds is shown in the image?"
    assert bench.categories == [c["name"] for c in categories]
    assert bench.rare_categories == {c["name"] for c in categories if c["is_rare"]} and bench.rare_categories
    assert len(bench) == sum(c["n_test"] for c in categories)
    assert bench.missing_images() == [] and bench.options_source == "option file foci_test.json"
    siblings = {c["name"]: c["negatives"] for c in categories}
    assert all(e.options[1:] == siblings[e.groundtruth][:3] for e in bench.examples)


def test_synthetic_train_split_takes_options_from_the_rows_negatives(synthetic):
    bench = load_benchmark(str(synthetic), split="train")
    rows = [json.loads(line) for line in (synthetic / "train" / "metadata.jsonl").read_text().splitlines()]
    assert [e.options for e in bench.examples] == [[r["category"], *r["neg_categories"][:3]] for r in rows]
    assert bench.options_source == "the rows' neg_categories" and bench.missing_images() == []


def write_class_folders(root, labels=BIRDS[:5], per_class=2):
    for c, label in enumerate(labels):
        (root / "test" / label).mkdir(parents=True)
        for i in range(per_class):
            Image.new("RGB", (16, 16), COLOURS[c]).save(root / "test" / label / f"{i}.png")
    return root


def test_imagefolder_without_negatives_or_attributes_falls_back_to_name_similarity(tmp_path, caplog):
    root = write_class_folders(tmp_path / "folder")
    bench = load_benchmark(str(root))
    assert len(bench) == 10 and sorted(bench.categories) == sorted(BIRDS[:5])
    expected = hard_negatives_by_name(bench.categories)
    assert all(e.options == [e.groundtruth, *expected[e.groundtruth]] for e in bench.examples)
    assert bench.options_source == "hard negatives by name similarity" and "category NAMES" in caplog.text
    assert bench.load_image(bench.examples[0]).size == (16, 16)


def test_imagefolder_options_come_from_a_given_mapping_or_miner(tmp_path):
    root = write_class_folders(tmp_path / "folder")
    mapping = {label: [other for other in BIRDS[:5] if other != label][::-1] for label in BIRDS[:5]}
    assert all(e.options[1:] == mapping[e.groundtruth][:3]
               for e in load_benchmark(str(root), negatives=mapping).examples)
    calls = []

    def reverse_alphabetical(names):
        calls.append(list(names))
        return {n: sorted((o for o in names if o != n), reverse=True) for n in names}

    bench = load_benchmark(str(root), negatives=reverse_alphabetical)
    assert len(calls) == 1 and bench.options_source == "hard negatives from reverse_alphabetical"
    assert all(e.options[1:] == sorted((o for o in BIRDS[:5] if o != e.groundtruth), reverse=True)[:3]
               for e in bench.examples)


def test_imagefolder_rows_with_attributes_are_mined_by_attribute_overlap(tmp_path):
    split = tmp_path / "folder" / "test"
    split.mkdir(parents=True)
    attributes = {"A a": {"beak": "short", "tail": "long", "crown": "red"},
                  "B b": {"beak": "short", "tail": "long", "crown": "blue"},
                  "C c": {"beak": "short", "tail": "fork", "crown": "blue"},
                  "D d": {"beak": "hooked", "tail": "fork", "crown": "grey"},
                  "E e": {"beak": "hooked", "tail": "stub", "crown": "grey"}}
    rows = []
    for i, (name, values) in enumerate(attributes.items()):
        Image.new("RGB", (8, 8), COLOURS[i]).save(split / f"{i}.png")
        rows.append({"file_name": f"{i}.png", "category": name, "attributes": json.dumps(values), "is_rare": i == 4})
    (split / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    bench = load_benchmark(str(tmp_path / "folder"))
    assert bench.examples[0].options[:2] == ["A a", "B b"]  # the one-attribute sibling is the hardest negative
    assert bench.options_source == "hard negatives mined by attribute overlap"
    assert bench.rare_categories == {"E e"}


def test_datasets_folder_with_classlabel_loads_images_from_memory(tmp_path):
    from datasets import ClassLabel, Dataset, DatasetDict, Features
    from datasets import Image as ImageFeature

    features = Features({"image": ImageFeature(), "label": ClassLabel(names=BIRDS[:4])})
    rows = {"image": [Image.new("RGB", (12, 12), COLOURS[i % 4]) for i in range(8)],
            "label": [i % 4 for i in range(8)]}
    DatasetDict({"test": Dataset.from_dict(rows, features=features)}).save_to_disk(str(tmp_path / "ds"))
    bench = load_benchmark(str(tmp_path / "ds"))
    assert [e.groundtruth for e in bench.examples] == [BIRDS[i % 4] for i in range(8)]
    assert bench.image_root is None and bench.missing_images() == []
    assert bench.load_image(bench.examples[2]).getpixel((0, 0)) == (0, 0, 255)
    with pytest.raises(ValueError, match="has no split 'validation'"):
        load_benchmark(str(tmp_path / "ds"), split="validation")


def test_labels_outside_ascii_are_kept(tmp_path):
    root = write_class_folders(tmp_path / "folder", labels=["Café Crème", "Æsop Tit", "Straße Finch", "鳥 Reedhopper"])
    bench = load_benchmark(str(root))
    assert "鳥 Reedhopper" in bench.categories
    assert all(set(e.options) == set(bench.categories) for e in bench.examples)


def test_empty_benchmarks_are_clear_errors(tmp_path):
    (tmp_path / "empty" / "test").mkdir(parents=True)
    with pytest.raises(ValueError, match="no images in class folders .* the benchmark would be empty"):
        load_benchmark(str(tmp_path / "empty"))
    (tmp_path / "empty" / "test" / "metadata.jsonl").write_text("\n", encoding="utf-8")
    with pytest.raises(ValueError, match="metadata.jsonl holds no rows"):
        load_benchmark(str(tmp_path / "empty"))
    (tmp_path / "options.json").write_text("{}", encoding="utf-8")
    with pytest.raises(ValueError, match="holds no examples"):
        load_benchmark(str(tmp_path / "options.json"))
    with pytest.raises(FileNotFoundError, match="benchmark not found"):
        load_benchmark(str(tmp_path / "nothing-here"))


def test_too_few_categories_for_four_options_is_a_clear_error(tmp_path):
    root = write_class_folders(tmp_path / "folder", labels=BIRDS[:3])
    with pytest.raises(ValueError, match=r"row 0: only 2 wrong options for 'Ashcombe Reedhopper'; need 3"):
        load_benchmark(str(root))


def test_bad_metadata_rows_name_file_row_and_field(tmp_path):
    split = tmp_path / "folder" / "test"
    split.mkdir(parents=True)
    rows = ([{"file_name": f"{i}.png", "category": BIRDS[i]} for i in range(4)]
            + [{"file_name": "x.png", "category": ""}])
    (split / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    with pytest.raises(ValueError, match=r"metadata.jsonl: row 4: field 'category' must be a non-empty category name"):
        load_benchmark(str(tmp_path / "folder"))
