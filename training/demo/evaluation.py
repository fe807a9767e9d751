"""The demo's evaluation: every model in every scoring mode on the same questions, the base model's
premise, and the exported Finedefics checkpoint with its model card."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from .plan import DemoPlan

EVAL_MODES = ("generate", "likelihood", "embedding", "open_set")
EVAL_OPTION_SEED = 0  # the option order of every question: the same for every model and every training seed
SCORES_FILE = "scores.json"


def evaluate_models(models: dict[str, Path], data, split: str, report_dir: Path, plan: DemoPlan, desc: str) -> dict:
    """Evaluate each model in every mode on ``split``; writes report_dir/<model>/ and returns the reports."""
    from tqdm.auto import tqdm

    from finedefics_eval import evaluate_model, write_report

    benchmark = data.benchmark(split)
    reports = {}
    for name, folder in tqdm(models.items(), desc=desc, unit="model", leave=False):
        model, processor = load_demo_model(folder)
        report = evaluate_model(model, processor, benchmark, modes=EVAL_MODES, seed=EVAL_OPTION_SEED,
                                batch_size=plan.eval_batch_size, model_name=name, progress=False)
        write_report(dict(report), report_dir / name)
        scores = {key: value for key, value in report.items() if key != "predictions"}
        # Per-question correctness, kept for the paired comparison of models over seeds.
        scores["correct"] = {mode: [r["predicted"] == r["correct"] for r in records]
                             for mode, records in report["predictions"].items()}
        scores["rare_rows"] = [r["correct"] in (benchmark.rare_categories or ()) for r in
                               report["predictions"][EVAL_MODES[0]]]
        (report_dir / name / SCORES_FILE).write_text(json.dumps(scores, default=str))
        reports[name] = scores
    return reports


def load_demo_model(folder: Path):
    """A demo checkpoint of any backbone, with its family's classes, in float32 on the CPU (the demo's device)."""
    from finedefics_eval.loading import load_model

    return load_model(str(folder), device="cpu", dtype="float32")


def load_scores(report_dir: Path, names) -> dict:
    return {name: json.loads((report_dir / name / SCORES_FILE).read_text()) for name in names}


def measure_premise(base: Path, data, split: str, plan: DemoPlan, path: Path) -> dict:
    """Object information extraction and category knowledge of the base model (see ``premise.py``)."""
    from .premise import category_knowledge, multiple_choice_in_text, object_information_extraction

    model, processor = load_demo_model(base)
    rows = data.spread_rows(split, plan.premise_images)
    premise = {
        "split": split,
        "object_information_extraction": object_information_extraction(
            model, processor, rows, data.categories, data.parse, data.noun, data.distinguishing(),
            batch_size=plan.eval_batch_size),
        "category_knowledge": category_knowledge(model, processor, data.categories, data.parse, data.rare,
                                                 batch_size=plan.eval_batch_size, noun=data.noun),
        "multiple_choice_in_text": multiple_choice_in_text(model, processor, data.categories, data.negatives(),
                                                           data.noun, data.rare, batch_size=plan.eval_batch_size),
        "multiple_choice_in_text_named": multiple_choice_in_text(
            model, processor, data.categories, data.negatives(), data.noun, data.rare,
            batch_size=plan.eval_batch_size, named=True),
    }
    path.write_text(json.dumps(premise, indent=1))
    return premise

def export_model(final_dir: Path, model_dir: Path, report_dir: Path) -> None:
    """The Finedefics checkpoint with its filled model card as README.md."""
    from finedefics_eval import load_report, write_model_card

    if model_dir.exists():
        shutil.rmtree(model_dir)
    shutil.copytree(final_dir, model_dir)
    report = load_report(report_dir / "finedefics" / "report.json")
    write_model_card(model_dir, report, recipe={"demo": "finedefics demo", "stages": "stage I + stage II"},
                     base_model=None)
