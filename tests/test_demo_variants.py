"""The demo's variant registry, its bad inputs, the sibling share of stage I's in-batch negatives, and the gaps
and ablation table over whichever variants ran (no training here: each test takes seconds)."""

import pytest

from finedefics_training.demo import report
from finedefics_training.demo.plan import quick_plan
from finedefics_training.demo.siblings import chance_share, sampler_batches, sibling_negative_share, sibling_relation
from finedefics_training.demo.variants import (
    ABLATION_VARIANTS,
    DEFAULT_VARIANTS,
    VARIANTS,
    describe_variant,
    resolve_variants,
)


# ----------------------------------------------------------------------------- the registry
def test_default_and_ablation_variants_and_their_schedules():
    assert resolve_variants() == DEFAULT_VARIANTS == ("finedefics", "instruction_tuning", "instruction_tuning_stage2")
    assert set(ABLATION_VARIANTS) == {"finedefics", "instruction_tuning", "instruction_tuning_stage2",
                                      "no_hard_negatives", "no_attribute_descriptions", "single_stage"}
    # finedefics always runs (every comparison is against it); the order is the registry's.
    assert resolve_variants(["single_stage", "no_hard_negatives"]) == ("finedefics", "no_hard_negatives",
                                                                       "single_stage")
    plan = quick_plan()
    plan.stage1_steps, plan.stage2_steps = 30, 20

    def steps(name):
        return [(stage.stage, stage.steps_of(plan)) for stage in VARIANTS[name].stages]

    assert steps("finedefics") == [(1, 30), (2, 20)]
    assert steps("instruction_tuning") == [(2, 50)]  # equal total optimizer steps
    assert steps("instruction_tuning_stage2") == [(2, 20)]  # equal stage II steps
    assert steps("no_hard_negatives") == steps("no_attribute_descriptions") == [(1, 30), (2, 20)]
    assert steps("single_stage") == [(1, 50)]
    assert describe_variant("single_stage", plan) == "stage I (50 steps; stage1_recognition_ratio=0.5)"


def test_variant_settings_are_training_config_fields():
    from finedefics_training.config import FinedeficsTrainingConfig

    def config(name, index):
        return FinedeficsTrainingConfig(output_dir="unused", use_cpu=True, bf16=False,
                                        **VARIANTS[name].stages[index].settings)

    no_descriptions = config("no_attribute_descriptions", 0)
    assert no_descriptions.use_attribute_descriptions is False
    assert {k: v for k, v in no_descriptions.contrastive_weights.items() if v} == {"object_category": 0.5,
                                                                                   "category_category": 0.5}
    assert config("single_stage", 0).stage1_recognition_ratio == 0.5
    assert config("no_hard_negatives", 0).use_hard_negatives is False
    assert config("no_attribute_descriptions", 1).contrastive_weights == config("finedefics", 1).contrastive_weights


def test_train_variants_chains_stages_records_phases_and_resumes(tmp_path, monkeypatch):
    from finedefics_training.demo import train
    from finedefics_training.demo.phases import Phases

    calls = []
    monkeypatch.setattr(train, "train_phase", lambda source, data, output, plan, **kw: calls.append(
        (source.name if source.name != "final" else f"{source.parent.name}/final", output.name, kw["stage"],
         kw["steps"], kw["settings"], data.name)))
    plan = quick_plan()
    phases = Phases(tmp_path)
    data_dirs = {"benchmark": tmp_path / "data", "generated": tmp_path / "described"}
    trained = train.train_variants(tmp_path / "base", data_dirs, tmp_path / "runs", plan, 3, phases,
                                   ("finedefics", "instruction_tuning", "single_stage"))
    assert calls == [("base", "finedefics-1", 1, 40, {}, "data"),
                     ("finedefics-1/final", "finedefics-2", 2, 40, {}, "data"),
                     ("base", "instruction-tuning", 2, 80, {}, "data"),
                     ("base", "single-stage", 1, 80, {"stage1_recognition_ratio": 0.5}, "data")]
    assert trained["finedefics"] == (tmp_path / "runs" / "seed-3" / "finedefics-2" / "final",
                                     [tmp_path / "runs" / "seed-3" / "finedefics-1",
                                      tmp_path / "runs" / "seed-3" / "finedefics-2"])
    # The phase names of the demo's first variants are kept, so older runs resume.
    assert {"seed 3: finedefics stage I", "seed 3: finedefics stage II", "seed 3: instruction tuning",
            "seed 3: single stage"} == set(Phases(tmp_path).state["done"])
    calls.clear()
    train.train_variants(tmp_path / "base", data_dirs, tmp_path / "runs", plan, 3, Phases(tmp_path),
                         ("finedefics", "no_hard_negatives", "finedefics_generated"))
    assert [call[1] for call in calls] == ["no-hn-1", "no-hn-2", "finedefics-generated-1",
                                           "finedefics-generated-2"]  # only what had not run
    assert calls[0][4] == {"use_hard_negatives": False}
    # The generated-descriptions variant is Finedefics' schedule on the folder of generated descriptions.
    assert [(call[2], call[3], call[4], call[5]) for call in calls[2:]] == [(1, 40, {}, "described"),
                                                                            (2, 40, {}, "described")]


def test_a_phase_trains_with_its_variants_settings_over_the_demo_defaults(tmp_path, monkeypatch):
    """Every variant's settings (including use_hard_negatives, which train_phase also takes) reach the training
    config: an ablation must never run as plain Finedefics, or crash on a duplicated field."""
    from finedefics_training import recipe
    from finedefics_training.demo import train
    from finedefics_training.demo.variants import VARIANTS

    seen = []
    monkeypatch.setattr(recipe, "run_stage", lambda model_args, data_args, args, progress=None: seen.append(args))
    plan = quick_plan()
    for name in ABLATION_VARIANTS:
        for stage in VARIANTS[name].stages:
            train.train_phase(tmp_path / "base", tmp_path / "data", tmp_path / name, plan, stage=stage.stage,
                              steps=3, learning_rate=1e-3, seed=0, settings=stage.settings)
            args = seen[-1]
            assert all(getattr(args, key) == value for key, value in stage.settings.items()), (name, stage.phase)
            assert args.bf16 is False and args.max_steps == 3 and args.stage == stage.stage
    assert seen and not all(args.use_hard_negatives for args in seen)  # no_hard_negatives' stage I turned it off


# ----------------------------------------------------------------------------- bad input
def _main(*args):
    from finedefics_cli import main

    return main(["demo", *args])


def test_an_unknown_variant_is_named_with_the_known_ones_before_anything_runs(tmp_path, capsys):
    with pytest.raises(ValueError, match="unknown demo variant.*'no_hard_negative'.*known: finedefics, "):
        resolve_variants(["finedefics", "no_hard_negative"])
    assert _main("--quick", "--output-dir", str(tmp_path / "out"), "--variants", "no_hard_negative") == 2
    error = capsys.readouterr().err
    assert "unknown demo variant(s) 'no_hard_negative'" in error and "single_stage" in error
    assert not (tmp_path / "out").exists()


def test_an_unknown_set_key_is_a_clear_error_before_anything_runs(tmp_path, capsys):
    assert _main("--quick", "--output-dir", str(tmp_path / "out"), "--set", "stage3_steps=5") == 2
    assert "unknown demo setting 'stage3_steps'; known: " in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_data_without_a_validation_split_is_refused_before_training(tmp_path, capsys):
    from finedefics_data.synth import SynthConfig, generate_benchmark
    from finedefics_training.demo.data import DemoData

    folder = generate_benchmark(tmp_path / "no-validation", SynthConfig(
        num_genera=2, species_per_genus=2, train_per_category=3, rare_train_per_category=2, validation_per_category=0,
        test_per_category=1), progress=False)
    with pytest.raises(ValueError, match=f"demo data folder {folder} has no validation split"):
        DemoData.open(folder, tmp_path / "prepared")
    import logging

    from transformers.utils import logging as hf_logging

    levels = {name: logging.getLogger(name).level for name in ("finedefics_training.recipe", "finedefics_eval")}
    verbosity = hf_logging.get_verbosity()
    assert _main("--quick", "--output-dir", str(tmp_path / "out"), "--data", str(folder)) == 2
    assert f"{folder} has no validation split (has test, train)" in capsys.readouterr().err
    assert not (tmp_path / "out" / "runs").exists()  # no phase ran: no base, no training
    # The demo quiets the libraries while it runs and gives the caller its logging back, even on an error.
    assert {name: logging.getLogger(name).level for name in levels} == levels
    assert hf_logging.get_verbosity() == verbosity


# ----------------------------------------------------------------------------- siblings
def test_sibling_share_of_in_batch_negatives_by_hand():
    categories = [{"name": "A1", "genus": "A"}, {"name": "A2", "genus": "A"}, {"name": "B1", "genus": "B"}]
    siblings, relation = sibling_relation(categories, {})
    assert relation == "same genus" and siblings == {"A1": {"A2"}, "A2": {"A1"}, "B1": set()}
    batches = [["A1", "A2", "B1", "A1"], ["B1", "B1", "A2"]]
    # Batch 1: 10 ordered pairs of rows of different categories, 4 of them A1/A2; batch 2: 4 pairs, none siblings.
    assert sibling_negative_share(batches, siblings) == {"share": 4 / 14, "pairs": 14, "sibling_pairs": 4,
                                                         "batches": 2}
    # Without genera, each category's hard negatives stand for its siblings (in the row's direction).
    no_genus = [{"name": c["name"]} for c in categories]
    by_negatives, relation = sibling_relation(no_genus, {"A1": ["A2"], "A2": ["B1"], "B1": ["A1", "A2"]})
    assert relation == "hard-negative lists"
    # Batch 1: A1->A2 twice, B1->A1 twice, A2->B1 once, B1->A2 once; batch 2: A2->B1 twice, B1->A2 twice.
    assert sibling_negative_share(batches, by_negatives)["sibling_pairs"] == 10
    # Chance: rows A1 x2, A2 x1, B1 x1 -> 10 ordered pairs of different categories, 4 of them siblings.
    assert chance_share(["A1", "A1", "A2", "B1"], siblings) == pytest.approx(0.4)
    assert sibling_negative_share([["A1", "A1"]], siblings)["share"] is None  # no negative at all


def test_sampler_batches_are_the_batches_the_trainer_trains_on(tmp_path):
    """Trainer.train over 2.5 epochs records the categories its collator gets: the same batches, in order."""
    import datasets
    import torch
    from transformers import Trainer, TrainingArguments

    categories = [f"c{i % 5}-{i}" for i in range(10)]
    seen = []

    def collate(rows):
        seen.append([row["category"] for row in rows])
        return {"x": torch.ones(len(rows), 1)}

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.zeros(1))

        def forward(self, x):
            return {"loss": (x * self.weight).sum()}

    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=4, seed=5, data_seed=5,
                             use_cpu=True, report_to="none", remove_unused_columns=False, dataloader_num_workers=0,
                             max_steps=8, save_strategy="no", disable_tqdm=True)
    Trainer(model=Model(), args=args, train_dataset=datasets.Dataset.from_dict({"category": categories}),
            data_collator=collate).train()
    batches = sampler_batches(categories, batch_size=4, steps=8, seed=5)
    assert batches == seen[:8] and len(batches) == 8
    assert sorted(sum(batches[:3], [])) == sorted(categories)  # one epoch = 3 batches (4 + 4 + 2)
    assert sampler_batches(categories, batch_size=4, steps=8, seed=6) != batches


# ----------------------------------------------------------------------------- gaps and the ablation table
def _scores(correct: dict[str, list[int]], rare: list[bool]) -> dict:
    return {name: {"correct": {mode: [bool(c) for c in values] for mode in report.GAP_MODES}, "rare_rows": rare}
            for name, values in correct.items()}


def test_gaps_compare_finedefics_with_every_variant_that_ran_under_its_protocol():
    rare = [False] * 4 + [True] * 2
    scores = {seed: _scores({"finedefics": [1, 1, 1, 0, 1, 0], "instruction_tuning": [1, 0, 0, 0, 0, 0],
                             "instruction_tuning_stage2": [0, 0, 0, 0, 0, 0], "single_stage": [1, 1, 0, 0, 1, 1]},
                            rare) for seed in (0, 1)}
    table = report.gaps(scores)
    compared = {key.split(",")[0] for key in table}
    assert compared == {"finedefics - instruction_tuning", "finedefics - instruction_tuning_stage2",
                        "finedefics - single_stage"}  # nothing about variants that did not run
    assert table["finedefics - instruction_tuning, generate"]["mean"] == pytest.approx(3 / 6)
    assert table["finedefics - instruction_tuning, generate"]["protocol"] == "equal total steps"
    assert table["finedefics - instruction_tuning_stage2, likelihood"]["per_seed"] == pytest.approx([4 / 6, 4 / 6])
    assert table["finedefics - instruction_tuning_stage2, open_set"]["protocol"] == "equal stage II steps"
    assert table["finedefics - single_stage, embedding, rare"]["mean"] == pytest.approx(-0.5)
    assert table["finedefics - single_stage, generate"]["kind"] == "ablation"
    lines = "\n".join(report.gap_lines(table))
    assert "| finedefics - instruction_tuning_stage2, generate | equal stage II steps | +66.7 |" in lines


def test_the_ablation_table_has_the_papers_rows_of_the_variants_that_ran():
    mean = [{"model": name, "generate": value, "generate_rare": value / 2, "open_set": 0.5}
            for name, value in [("base", 0.1), ("finedefics", 0.8), ("instruction_tuning", 0.4),
                                ("no_hard_negatives", 0.7), ("single_stage", 0.6)]]
    rows = report.ablation_rows(mean)
    assert [row["model"] for row in rows] == ["Finedefics", "w/o hard negatives", "single stage",
                                              "instruction tuning only (equal total steps)"]
    table = report.markdown_table(rows, columns=report.ABLATION_COLUMNS)
    assert table.splitlines()[0] == "| model | generate | likelihood | embedding | open-set | generate rare |"
    assert "| w/o hard negatives | 70.0 | - | - | 50.0 | 35.0 |" in table
    measured = {0: {"share": 0.25, "pairs": 400, "batches": 40, "batch_size": 8, "relation": "same genus",
                    "chance": 0.2}}
    (line,) = report.sibling_lines(measured)
    assert "25.0% of 400 (row, other-category row) pairs" in line and "20.0% for pairs of training rows" in line
