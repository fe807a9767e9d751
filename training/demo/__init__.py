"""``finedefics demo``: the paper's experiment in miniature, end to end on a CPU (see ``run.py``).

The names below are those of the former module ``finedefics_training.demo``, kept importable from here.
"""

from .run import (BASE_FIELDS, BUILD_FILE, EVAL_MODES, EVAL_OPTION_SEED, MAY_BE_ZERO, RATIOS, SCORES_FILE,
                  SHIPPED_BASE, VARIANTS, DemoPlan, PhaseProgress, Phases, apply_overrides, base_recipe, build_base,
                  check_plan_value, copy_shipped_base, default_plan, evaluate_models, export_model, load_scores,
                  make_base_dataset, make_data, make_initial_model, measure_premise, pretrain_vision_phase,
                  quick_plan, run_demo, shipped_base_dir, shipped_base_for, train_phase, train_variants,
                  weights_digest)

__all__ = [
    "BASE_FIELDS", "BUILD_FILE", "EVAL_MODES", "EVAL_OPTION_SEED", "MAY_BE_ZERO", "RATIOS", "SCORES_FILE",
    "SHIPPED_BASE", "VARIANTS", "DemoPlan", "PhaseProgress", "Phases", "apply_overrides", "base_recipe", "build_base",
    "check_plan_value", "copy_shipped_base", "default_plan", "evaluate_models", "export_model", "load_scores",
    "make_base_dataset", "make_data", "make_initial_model", "measure_premise", "pretrain_vision_phase",
    "quick_plan", "run_demo", "shipped_base_dir", "shipped_base_for", "train_phase", "train_variants",
    "weights_digest",
]
