"""``run_demo``: the demo's phases in order, from the benchmark to the report and the exported model."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from .data import DemoData, make_data
from .descriptions import BENCHMARK, GENERATED, SOURCES, generate_descriptions
from .evaluation import SCORES_FILE, evaluate_models, export_model, load_scores, measure_premise
from .phases import Phases
from .plan import apply_overrides, base_recipe, plan_for
from .report import write_demo_report
from .shipped_base import copy_shipped_base, record_build, shipped_base_for
from .siblings import measure_sibling_negatives
from .train import build_base, train_variants
from .variants import DEFAULT_VARIANTS, needs_generated_descriptions, resolve_variants
from .variants import VARIANTS as VARIANT_REGISTRY

VARIANTS = tuple(VARIANT_REGISTRY)  # every variant's name (``variants.VARIANTS`` has their stages)


def _quiet_libraries():
    """The demo prints one line per phase and one progress bar: silence the libraries' own chatter.

    Returns a function that restores every level and switch changed here, so that calling ``run_demo`` from a
    notebook or a test leaves the caller's logging as it found it."""
    import datasets
    from transformers.utils import logging as hf_logging

    hf_verbosity, hf_bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    datasets_verbosity, datasets_bars = datasets.logging.get_verbosity(), datasets.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()  # weight loading / saving bars
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    levels = {name: logging.WARNING for name in ("finedefics_training.recipe", "finedefics_training.trainer",
                                                 "finedefics_data", "finedefics_training.demo.base", "finedefics_eval",
                                                 "modeling_finedefics")}
    levels["bitsandbytes"] = logging.ERROR  # optional CPU kernels it cannot find; no QLoRA here
    former = {name: logging.getLogger(name).level for name in levels}
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)

    def restore() -> None:
        for name, level in former.items():
            logging.getLogger(name).setLevel(level)
        hf_logging.set_verbosity(hf_verbosity)
        datasets.logging.set_verbosity(datasets_verbosity)
        if hf_bars:
            hf_logging.enable_progress_bar()
        if datasets_bars:
            datasets.enable_progress_bars()

    return restore


def run_demo(output_dir: str | Path, quick: bool = False, seeds: tuple[int, ...] = (0,), overrides: dict | None = None,
             data_dir: str | Path | None = None, rebuild_base: bool = False, eval_split: str = "test",
             variants=None, descriptions: str = BENCHMARK) -> str:
    """Run the whole demo into ``output_dir`` and return the comparison table (markdown).

    Args:
        quick: the smoke-test plan (micro model; the premise is not expected to hold).
        seeds: training seeds of the variants; the benchmark, the base and the evaluation questions are
            the same for all of them, so seeds differ only in the variants' training.
        overrides: fields of the plan to change (e.g. ``{"stage1_steps": 600}``).
        data_dir: a dataset folder from ``finedefics data`` instead of the embedded benchmark.
        rebuild_base: build the base model even when the shipped one fits, and say whether the
            result is bit for bit the shipped one.
        eval_split: ``test`` for the final table, ``validation`` while choosing settings.
        variants: names from ``variants.VARIANTS`` (default ``DEFAULT_VARIANTS``; ``finedefics`` always runs).
        descriptions: ``generated`` adds ``finedefics_generated``: Finedefics trained on descriptions the base
            writes for the training images (``descriptions.py``), beside the one on the benchmark's.
    """
    from ..checkpoints import check_output_dir

    plan = apply_overrides(plan_for(quick, own_data=data_dir is not None), overrides or {})  # before anything runs
    if descriptions not in SOURCES:
        raise ValueError(f"unknown description source {descriptions!r}; choose one of {', '.join(SOURCES)}")
    if descriptions == GENERATED and data_dir is not None:
        raise ValueError("--descriptions generated reads the base's answers with the synthetic benchmark's parser; "
                         "for your own data run `finedefics data describe` and give its --output as --data")
    variants = resolve_variants(list(variants or DEFAULT_VARIANTS) + (["finedefics_generated"]
                                                                      if descriptions == GENERATED else []))
    check_output_dir(output_dir)
    restore_logging = _quiet_libraries()
    try:
        output_dir = Path(output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        phases = Phases(output_dir)
        runs_dir, report_dir = output_dir / "runs", output_dir / "report"
        report_dir.mkdir(exist_ok=True)

        if data_dir is None:
            data_dir = output_dir / "data"
            phases.run("benchmark", make_data, data_dir, plan)
        data = DemoData.open(Path(data_dir), output_dir / "data-prepared")
        if eval_split not in data.splits:
            raise ValueError(f"{data_dir} has no {eval_split!r} split to evaluate on (has {sorted(data.splits)})")

        recipe = base_recipe(plan, data.identity())
        shipped = None if rebuild_base else shipped_base_for(recipe)
        if shipped is not None:
            phases.run("base model (shipped)", copy_shipped_base, shipped, runs_dir / "base" / "final")
            base = runs_dir / "base" / "final"
        else:
            base = build_base(data, runs_dir, plan, phases)
            record_build(base, recipe, phases, rebuild_base)

        premise = phases.run("premise (base model)", measure_premise, base, data, eval_split, plan,
                             report_dir / "premise.json")
        premise = premise or json.loads((report_dir / "premise.json").read_text())
        phases.run("evaluation: base", evaluate_models, {"base": base}, data, eval_split, report_dir, plan,
                   desc="evaluating the base")
        data_dirs, generated = {BENCHMARK: data.training_dir, GENERATED: runs_dir / "described"}, None
        if needs_generated_descriptions(variants):
            phases.run("descriptions: generated by the base", generate_descriptions, data, base, data_dirs[GENERATED],
                       report_dir / "descriptions.json")
            generated = json.loads((report_dir / "descriptions.json").read_text())
        runs, scores, siblings = {}, load_scores(report_dir, ["base"]), {}
        for seed in seeds:
            trained = train_variants(base, data_dirs, runs_dir, plan, seed, phases, variants)
            seed_dir = report_dir / f"seed-{seed}"
            legacy = phases.done(f"seed {seed}: evaluation")  # the one evaluation phase of runs before the registry
            for name, (final, _) in trained.items():  # a phase per variant: variants added later evaluate alone
                if legacy and (seed_dir / name / SCORES_FILE).is_file():
                    continue
                phases.run(f"seed {seed}: evaluation: {name}", evaluate_models, {name: final}, data, eval_split,
                           seed_dir, plan, desc=f"seed {seed}: evaluating {name}")
            runs[seed] = {name: stage_dirs for name, (_, stage_dirs) in trained.items()}
            scores[seed] = load_scores(seed_dir, variants)
            siblings[seed] = measure_sibling_negatives(data, plan, seed)
        table = write_demo_report(report_dir, premise, scores, runs, plan, phases, data, eval_split,
                                  sibling_negatives=siblings, shipped_base=shipped is not None,
                                  descriptions=generated)
        first = seeds[0]
        phases.run("export model", export_model, runs_dir / f"seed-{first}" / "finedefics-2" / "final",
                   output_dir / "model", report_dir / f"seed-{first}")
        return table
    finally:
        restore_logging()
