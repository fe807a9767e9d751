"""`finedefics demo --descriptions generated`: the base describes the training images through `finedefics data
describe`, its answers read by the benchmark's parser, the result scored against the benchmark's truth."""

import json

import pytest
from datasets import load_from_disk
from describe_helpers import DEMO_BASE

from finedefics_data.synth import (
    ATTRIBUTE_QUESTION_NAMES,
    ATTRIBUTES,
    SynthConfig,
    generate_benchmark,
    parse_description,
)
from finedefics_training.demo.data import DemoData
from finedefics_training.demo.descriptions import (
    attribute_accuracy,
    benchmark_sentence,
    generate_descriptions,
    read_benchmark_value,
)

SMALL = SynthConfig(num_genera=2, species_per_genus=2, train_per_category=3, rare_train_per_category=1,
                    test_per_category=1, validation_per_category=1)


@pytest.fixture(scope="module")
def small_benchmark(tmp_path_factory):
    folder = tmp_path_factory.mktemp("small-benchmark")
    generate_benchmark(folder, SMALL, progress=False, overwrite=True)
    return DemoData.open(folder, folder.parent / "prepared")


def test_values_are_read_from_whole_description_answers_and_written_in_the_benchmarks_grammar():
    answer = "a slender bird with red plumage, barred grey wings, a forked tail, a smooth head and dark eyes."
    assert read_benchmark_value("wing pattern", answer) == "barred"
    assert read_benchmark_value("wing colour", answer) == "grey"
    assert read_benchmark_value("beak", answer) == "not visible"  # the answer does not state it
    assert set(ATTRIBUTE_QUESTION_NAMES) == set(ATTRIBUTES)  # one question per attribute of the benchmark
    values = {ATTRIBUTE_QUESTION_NAMES[key]: value for key, value in parse_description(answer).items()}
    assert parse_description(benchmark_sentence(values)) == parse_description(answer)
    # Without build or plumage the benchmark's grammar cannot write a sentence: the template sentence instead.
    assert benchmark_sentence({"beak": "hooked"}) == "a bird with beak hooked."


def test_attribute_accuracy_counts_the_truths_values_only():
    truth = ["a plump bird with red plumage, plain grey wings and a hooked beak."]
    generated = ["a plump bird with blue plumage, plain grey wings and a forked tail."]
    accuracy = attribute_accuracy(truth, generated)
    # 5 values stated by the truth (build, plumage, wing colour and pattern, beak); 3 alike.
    assert accuracy["values_scored"] == 5 and accuracy["overall"] == 0.6
    assert accuracy["per_attribute"] == {"beak": 0.0, "build": 1.0, "plumage": 0.0, "wing colour": 1.0,
                                         "wing pattern": 1.0}
    with pytest.raises(ValueError):
        attribute_accuracy(truth, generated * 2)  # misaligned rows are an error, never a silent cut


def test_the_shipped_base_describes_the_training_split_and_the_variants_can_train_on_it(small_benchmark, tmp_path):
    output, record_file = tmp_path / "described", tmp_path / "descriptions.json"
    record = generate_descriptions(small_benchmark, DEMO_BASE, output, record_file)
    train = small_benchmark.splits["train"]
    assert record == json.loads(record_file.read_text())
    assert record["source"] == "generated" and record["images"] == len(train)
    # Asked one attribute at a time, the shipped base answers with a whole description that states most values
    # right; asked about the beak it tends to leave the beak out (measured on the demo's 700 images: README).
    accuracy = record["attribute_accuracy"]
    assert accuracy["overall"] >= 0.7 and min(accuracy["per_attribute"][a] for a in ("build", "plumage")) >= 0.9, \
        accuracy
    assert record["answers"]["computed"] == len(train) * len(ATTRIBUTE_QUESTION_NAMES)
    described = load_from_disk(str(output))
    assert list(described) == ["train"]  # only the training split is described and written
    rows = described["train"]
    assert rows["category"] == train["category"] and rows["is_rare"] == train["is_rare"]
    # Negatives are mined within the genus (the taxonomy), so they are siblings as the benchmark's are.
    genus = {c["name"]: c["genus"] for c in small_benchmark.categories}
    for category, negatives in zip(rows["category"], rows["neg_categories"]):
        assert negatives and all(genus[n] == genus[category] for n in negatives[:1])
    assert all(parse_description(text).get("build") for text in rows["attribute"] if text)
    report = json.loads((output / "describe_report.json").read_text())
    assert report["answer_reader"].endswith("read_benchmark_value")
    assert report["models"]["summary"]["name"].endswith("benchmark_sentence")
    # A second run (the demo resumed) asks nothing again.
    again = generate_descriptions(small_benchmark, DEMO_BASE, output, record_file)
    assert again["answers"]["computed"] == 0 and again["attribute_accuracy"] == record["attribute_accuracy"]


def test_generated_descriptions_need_the_synthetic_benchmark(tmp_path):
    from finedefics_training.demo import run_demo

    with pytest.raises(ValueError, match="finedefics data describe"):
        run_demo(tmp_path / "demo", data_dir=tmp_path, descriptions="generated")
    with pytest.raises(ValueError, match="unknown description source 'made-up'"):
        run_demo(tmp_path / "demo", descriptions="made-up")
