"""`finedefics demo --quick` end to end: outputs exist and load, the premise and the gap are reported, several
seeds are aggregated, reruns resume, a seed gives the same numbers alone, and other data run the same experiment."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
from huggingface_hub import ModelCard

pytestmark = pytest.mark.slow

LOAD = textwrap.dedent(
    """
    import sys
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor
    folder = sys.argv[1]
    model = AutoModelForImageTextToText.from_pretrained(folder, trust_remote_code=True)
    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    assert type(model).__module__.startswith("transformers_modules."), type(model).__module__
    question = {"type": "text", "text": "What is the species of the bird in the image?"}
    messages = [{"role": "user", "content": [{"type": "image"}, question]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    inputs = processor(images=[[Image.new("RGB", (64, 64), "white")]], text=[prompt], return_tensors="pt")
    out = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    print("ANSWER", processor.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))
    """
)
MODELS = {"base", "finedefics", "instruction_tuning", "instruction_tuning_stage2"}  # the default variants


def _demo(output_dir, *extra):
    return subprocess.run([sys.executable, "-m", "finedefics_cli", "demo", "--quick", "--output-dir",
                           str(output_dir), *extra], capture_output=True, text=True, timeout=900, env={**os.environ})


def _report(output_dir) -> dict:
    return json.loads((output_dir / "report" / "report.json").read_text())


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("demo")
    result = _demo(output_dir, "--seeds", "0", "1")
    assert result.returncode == 0, result.stderr[-4000:]
    return output_dir, result


def test_demo_prints_the_comparison_and_writes_the_report(demo_run):
    output_dir, result = demo_run
    assert "| finedefics |" in result.stdout and "| instruction_tuning |" in result.stdout
    assert " ± " in result.stdout  # mean ± spread over the two seeds
    report = _report(output_dir)
    assert report["seeds"] == [0, 1] and {row["model"] for row in report["comparison"]} == MODELS
    assert set(report["comparison_per_seed"]) == {"0", "1"}
    assert set(report["models"]) == {"base"} | {f"seed-{s}/{m}" for s in (0, 1) for m in MODELS - {"base"}}
    for name, model_report in report["models"].items():
        assert set(model_report["modes"]) == {"generate", "likelihood", "embedding", "open_set"}, name
        assert model_report["modes"]["embedding"]["rare_vs_common"]["rare"]["n"] > 0
        for metrics in model_report["modes"].values():
            assert 0.0 <= metrics["accuracy"] <= 1.0
    for name in MODELS - {"base"}:
        assert (output_dir / "report" / "seed-1" / name / "report.md").is_file()
    curves = report["training_curves"]["finedefics"]
    assert any("loss_object_attribute" in entry for entry in curves)
    assert not any("loss_object_attribute" in entry for entry in report["training_curves"]["instruction_tuning"])
    # Same total optimizer steps for Finedefics and instruction tuning; the paper's baseline has stage II's steps.
    last_steps = {name: max(entry["step"] for entry in history) for name, history in report["training_curves"].items()}
    plan = report["plan"]
    assert last_steps == {"finedefics": plan["stage1_steps"] + plan["stage2_steps"],
                          "instruction_tuning": plan["stage1_steps"] + plan["stage2_steps"],
                          "instruction_tuning_stage2": plan["stage2_steps"]}, last_steps
    assert (output_dir / "report" / "training_curves.png").stat().st_size > 10_000


def test_the_gap_has_a_value_per_seed_and_an_interval(demo_run):
    output_dir, _ = demo_run
    report = _report(output_dir)
    gap = report["gaps"]["finedefics - instruction_tuning, generate"]
    assert len(gap["per_seed"]) == 2 and gap["mean"] == pytest.approx(sum(gap["per_seed"]) / 2)
    assert gap["ci95"][0] <= gap["mean"] <= gap["ci95"][1]
    # The per-seed gap is the difference of the two models' accuracies in that seed's table.
    table = {row["model"]: row for row in report["comparison_per_seed"]["1"]}
    assert gap["per_seed"][1] == pytest.approx(
        table["finedefics"]["generate"] - table["instruction_tuning"]["generate"])
    assert "finedefics - instruction_tuning, generate, rare" in report["gaps"]
    assert report["gaps"]["finedefics - instruction_tuning_stage2, generate"]["protocol"] == "equal stage II steps"
    markdown = (output_dir / "report" / "report.md").read_text()
    assert "## The premise" in markdown and "## Finedefics minus instruction tuning" in markdown
    siblings = report["in_batch_sibling_negatives"]
    assert set(siblings) == {"0", "1"} and 0 < siblings["0"]["share"] < 1 and siblings["0"]["relation"] == "same genus"
    assert "In-batch negatives that are siblings (same genus)" in markdown


def test_the_premise_is_measured_on_the_base_model(demo_run):
    output_dir, _ = demo_run
    premise = _report(output_dir)["premise"]
    extraction = premise["object_information_extraction"]
    assert extraction["scored_by"] == "attribute parser" and extraction["images"] > 0
    assert 0.0 <= extraction["recall"] <= 1.0 and extraction["distinguishing"]["values"] > 0
    assert set(extraction["per_attribute"]) <= {"build", "plumage", "wing_color", "wing_pattern", "breast", "beak",
                                                 "tail", "crest", "eye"}
    knowledge = premise["category_knowledge"]
    assert knowledge["categories"] == 12 and knowledge["rare"]["values"] > 0
    assert premise["summary"]["4-way recognition (generate)"] == \
        _report(output_dir)["models"]["base"]["modes"]["generate"]["accuracy"]


def test_demo_model_loads_in_a_fresh_process_with_its_card(demo_run):
    output_dir, _ = demo_run
    model_dir = output_dir / "model"
    result = subprocess.run([sys.executable, "-c", LOAD, str(model_dir)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "ANSWER" in result.stdout
    card = ModelCard.load(model_dir / "README.md")
    accuracies = [result.metric_value for result in card.data.eval_results]
    stored = _report(output_dir)["models"]["seed-0/finedefics"]["modes"]
    assert any(value == pytest.approx(100 * stored["generate"]["accuracy"], abs=0.01)
               or value == pytest.approx(stored["generate"]["accuracy"], abs=1e-4) for value in accuracies)


def test_console_shows_phase_lines_not_training_logs(demo_run):
    _, result = demo_run
    assert "'loss':" not in result.stderr and "{'train_runtime'" not in result.stderr
    assert "seed 1: finedefics stage I" in result.stderr and "premise (base model)" in result.stderr


def test_rerun_resumes_and_a_seed_alone_gives_the_same_numbers(demo_run, tmp_path):
    output_dir, _ = demo_run
    rerun = _demo(output_dir, "--seeds", "0", "1")
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert rerun.stderr.count("already done") >= 20  # every phase was skipped
    alone = _demo(tmp_path / "seed-1", "--seeds", "1")
    assert alone.returncode == 0, alone.stderr[-3000:]
    assert _report(tmp_path / "seed-1")["comparison_per_seed"]["1"] == _report(output_dir)["comparison_per_seed"]["1"]


def test_demo_runs_on_another_dataset(tmp_path):
    """A differently generated synthetic benchmark: the base is built for it, the premise scored on it."""
    from finedefics_data.synth import SynthConfig, generate_benchmark

    data = generate_benchmark(tmp_path / "other", SynthConfig(num_genera=3, species_per_genus=4, train_per_category=12,
                                                             rare_train_per_category=2, validation_per_category=2,
                                                             test_per_category=4, seed=5), progress=False)
    # The base's multiple choice in text (off in the shipped plans) runs as phases of its own when asked for.
    result = _demo(tmp_path / "out", "--data", str(data), "--eval-split", "validation",
                   "--set", "lookup_steps=3", "--set", "choice_steps=3")
    assert result.returncode == 0, result.stderr[-4000:]
    done = json.loads((tmp_path / "out" / "state.json").read_text())["done"]
    assert {f"base: multiple choice in text ({name})" for name in ("word lookup", "category choice")} <= set(done)
    assert (tmp_path / "out" / "runs" / "base-lookup" / "final").is_dir()
    report = _report(tmp_path / "out")
    assert report["data"] == str(data) and report["split"] == "validation"
    assert report["premise"]["category_knowledge"]["categories"] == 12
    assert report["models"]["base"]["n"] == 12 * 2
    assert not (tmp_path / "out" / "data").exists()  # the given data are used, not a generated benchmark


def test_choice_data_hold_only_the_phases_that_have_steps(tmp_path, tiny_processor):
    """Category choices without word lookups (``lookup_steps=0``): the lookup set is not written (an empty one
    could not be saved), the choice set holds the choices and the replayed knowledge."""
    import datasets

    from finedefics_data.synth import SynthConfig, generate_benchmark
    from finedefics_training.demo.data import DemoData
    from finedefics_training.demo.plan import apply_overrides, quick_plan
    from finedefics_training.demo.train import make_choice_datasets

    folder = generate_benchmark(tmp_path / "data", SynthConfig(num_genera=2, species_per_genus=3, train_per_category=4,
                                                               rare_train_per_category=2, validation_per_category=1,
                                                               test_per_category=1, seed=3), progress=False)
    data = DemoData.open(folder, tmp_path / "prepared")
    tiny_processor.save_pretrained(tmp_path / "tokenizer")
    plan = apply_overrides(quick_plan(), {"lookup_steps": 0, "choice_steps": 2, "choice_lookup_share": 1.0})
    make_choice_datasets(data, tmp_path / "choice-data", plan, tmp_path / "tokenizer")
    assert not (tmp_path / "choice-data" / "lookup").exists()
    rows = datasets.load_from_disk(str(tmp_path / "choice-data" / "choice"))["train"]
    named = [row for row in rows if row["question"].startswith("Which of these is ")]
    assert len(named) == 2 * plan.choice_batch_size  # every choice names its category (share 1.0)
    assert len(rows) > len(named)  # + the knowledge rows replayed


def test_choice_data_replay_the_captioning_image_rows(tmp_path, tiny_processor):
    """``choice_caption_share``: that share of the choice phase's rows are the captioning stage's image rows
    (drawn from its saved data, never its text rows), the category choices making up the rest; without the
    captioning data the error names the folder it looked in."""
    import datasets
    from PIL import Image

    from finedefics_data.synth import SynthConfig, generate_benchmark
    from finedefics_training.demo.base import base_dataset
    from finedefics_training.demo.data import DemoData
    from finedefics_training.demo.plan import apply_overrides, quick_plan
    from finedefics_training.demo.train import make_choice_datasets

    folder = generate_benchmark(tmp_path / "data", SynthConfig(num_genera=2, species_per_genus=3, train_per_category=4,
                                                               rare_train_per_category=2, validation_per_category=1,
                                                               test_per_category=1, seed=3), progress=False)
    data = DemoData.open(folder, tmp_path / "prepared")
    tiny_processor.save_pretrained(tmp_path / "tokenizer")
    images = [(Image.new("RGB", (16, 16), (40 * i, 0, 0)), "Describe the bird.", f"caption {i}") for i in range(3)]
    knowledge = [{"category": "Ardran Thistledart", "question": "What does it look like?", "answer": "slender"}]
    datasets.DatasetDict({"train": base_dataset(images, knowledge)}).save_to_disk(str(tmp_path / "captioning"))
    plan = apply_overrides(quick_plan(), {"choice_steps": 2, "choice_lookup_share": 1.0,
                                          "choice_caption_share": 0.25})
    make_choice_datasets(data, tmp_path / "choice-data", plan, tmp_path / "tokenizer", tmp_path / "captioning")
    rows = datasets.load_from_disk(str(tmp_path / "choice-data" / "choice"))["train"]
    replayed = [row for row in rows if row["image"] is not None]
    named = [row for row in rows if row["question"].startswith("Which of these is ")]
    choice_rows = 2 * plan.choice_batch_size
    assert len(replayed) == round(0.25 * choice_rows) and len(named) == choice_rows - len(replayed)
    assert {row["answer"] for row in replayed} <= {"caption 0", "caption 1", "caption 2"}
    assert not any(row["question"] == "What does it look like?" for row in rows)  # its text rows stay out
    assert rows["example_id"] == list(range(len(rows)))
    with pytest.raises(FileNotFoundError, match="missing-captioning"):
        make_choice_datasets(data, tmp_path / "other", plan, tmp_path / "tokenizer", tmp_path / "missing-captioning")


def test_each_run_records_the_plan_it_used_and_own_data_gets_the_budget_plan():
    """``--data`` starts from the budget plan (float32 base, 1000 captioning steps); the default benchmark's plan
    still names the shipped base; the recorded plan leaves out what a run did not use, saying why."""
    from finedefics_training.demo.plan import BASE_FIELDS, DemoPlan, default_plan, plan_for, quick_plan, recorded_plan

    own = plan_for(quick=False, own_data=True)
    assert (own.base_bf16, own.base_steps) == (False, 1000) and own.stage1_steps == default_plan().stage1_steps
    assert plan_for(quick=False, own_data=False) == default_plan()
    assert plan_for(quick=True, own_data=True) == quick_plan()
    used, unused = recorded_plan(own, synthetic=False, shipped_base=False)
    assert "pool_size" not in used and "base_steps" in used
    assert set(used) | set(unused) == set(own.__dataclass_fields__)
    assert "choice_steps is 0" in unused["choice_lookup_share"]
    assert "choice_batch_size" in unused  # nor word lookups: no multiple-choice phase at all
    used, unused = recorded_plan(quick_plan(), synthetic=True, shipped_base=False)
    assert "vision_steps" in used
    with_lookups = recorded_plan(DemoPlan(lookup_steps=5), synthetic=True, shipped_base=False)
    assert "choice_batch_size" in with_lookups[0] and "choice_lookup_share" in with_lookups[1]
    used, unused = recorded_plan(default_plan(), synthetic=True, shipped_base=True)
    assert set(BASE_FIELDS) - {"backbone"} <= set(unused) and "stage1_steps" in used


def test_demo_runs_on_a_reference_csv_dataset(tmp_path):
    """Data made by `finedefics data csv` (cars, no test split): splits are carved, the noun travels."""
    sys.path.insert(0, os.path.dirname(__file__))
    from reference_format import MODELS, write_reference_dataset

    from finedefics_cli import main

    cars = write_reference_dataset(tmp_path / "cars", train_per_model=12, test_per_model=1)
    data = tmp_path / "pretrain-data"
    assert main(["data", "csv", str(cars / "pretrain.csv"), "--image-root", str(cars / "images"), "--noun", "car",
                 "--output", str(data)]) == 0
    result = _demo(tmp_path / "out", "--data", str(data))
    assert result.returncode == 0, result.stderr[-4000:]
    assert "carved from its training rows" in result.stderr
    report = _report(tmp_path / "out")
    assert report["premise"]["object_information_extraction"]["scored_by"] == "description words"
    extraction = report["premise"]["object_information_extraction"]
    assert extraction["question"] == "Describe the attributes of the car in the image."
    assert report["premise"]["category_knowledge"]["categories"] == len(MODELS)
    assert report["models"]["base"]["protocol"]["query"] == "Which of these cars is shown in the image?"
    splits = "\n".join(report["data_splits"])  # where each split came from, in the report
    assert "- test: " in splits and "carved from the training rows (20% per category, seed 0)" in splits
    assert "rare slice of the test split: 1 categories, n = " in splits
    assert "Splits:" in (tmp_path / "out" / "report" / "report.md").read_text()
    # The recorded plan holds what this run used: no vision pre-training sizes for a dataset's own images.
    assert "vision_steps" not in report["plan"] and "base_steps" in report["plan"]
    assert "without vision pre-training" in report["plan_not_used"]["vision_steps"]


LOAD_ANY_FAMILY = textwrap.dedent(
    """
    import sys
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor
    folder = sys.argv[1]
    model = AutoModelForImageTextToText.from_pretrained(folder, trust_remote_code=True)
    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    assert type(model).__module__.startswith("transformers_modules."), type(model).__module__
    image = Image.new("RGB", (64, 64), "white")
    print("EMBEDDING", tuple(model.get_image_embeddings(**processor.image_embedding_inputs([image])).shape))
    print("TYPE", model.config.model_type)
    """
)


@pytest.mark.parametrize("backbone", ["idefics3", "smolvlm", "qwen2_vl", "qwen2_5_vl", "llava"])
def test_demo_runs_the_experiment_on_every_other_backbone(backbone, tmp_path):
    """`--backbone`: the same phases on a tiny model of another family; the exported checkpoint is that family's."""
    output_dir = tmp_path / "out"
    result = _demo(output_dir, "--backbone", backbone)
    assert result.returncode == 0, result.stderr[-4000:]
    assert f"no vision pre-training for the {backbone} backbone" in result.stderr
    report = _report(output_dir)
    assert {row["model"] for row in report["comparison"]} == MODELS
    config = json.loads((output_dir / "runs" / "base" / "final" / "config.json").read_text())
    assert config["model_type"] == f"finedefics_{backbone}"
    loaded = subprocess.run([sys.executable, "-c", LOAD_ANY_FAMILY, str(output_dir / "model")], capture_output=True,
                            text=True, cwd=tmp_path, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    assert f"TYPE finedefics_{backbone}" in loaded.stdout and "EMBEDDING (1, " in loaded.stdout


def test_an_unknown_backbone_is_refused_before_anything_runs(tmp_path):
    result = _demo(tmp_path / "out", "--backbone", "gpt2")
    assert result.returncode == 2 and "backbone must be a model family" in result.stderr
    assert not (tmp_path / "out" / "data").exists()
