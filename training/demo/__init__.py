"""``finedefics demo``: the paper's experiment in miniature, end to end on a CPU.

1. **Benchmark**: generate the synthetic fine-grained benchmark (or take ``--data DIR``).
2. **Base model**: what the paper found an MLLM already has before Finedefics: it sees and describes
   object attributes, and knows in words what each category looks like, but was never taught to name
   a category from its image (``finedefics_training.demo.base``). The default benchmark's base ships with the package
   (``demo_base/``, rebuilt bit for bit by ``--rebuild-base``); other data get one built on the spot.
3. **Premise**: measured on held-out images, not assumed (``finedefics_training.demo.premise``).
4. **Variants** (``variants.VARIANTS``), from the same base, with the same data, for each seed; by default
   - ``finedefics``: stage I (attribute contrastive + description tuning), then stage II;
   - ``instruction_tuning``: stage II only for the steps of both stages (equal total optimizer steps);
   - ``instruction_tuning_stage2``: stage II only for stage II's steps (equal stage II steps, the paper's);
   and with ``--ablations`` also ``no_hard_negatives`` (stage I with in-batch negatives only),
   ``no_attribute_descriptions`` (stage I without descriptions) and ``single_stage`` (one stage I run, half
   its rows asked recognition questions).
5. **Evaluation** of the base and every variant in the three scoring modes and open-set naming, with
   the rare-category slice; the same questions in the same option order for every model and seed.
6. **Report** (``report``): premise, per-seed and mean tables, the Finedefics - baseline and
   Finedefics - ablation gaps with their spread over seeds and 95% intervals over test images, the ablation
   table, the share of stage I's in-batch negatives that are siblings, training curves; and ``model/``,
   the Finedefics checkpoint of the first seed with its model card.

Every phase records its completion in ``state.json``; a rerun skips finished phases, and a training
phase interrupted mid-way resumes from its last Trainer checkpoint.

Modules: ``plan`` (the sizes of a run, ``--set``), ``phases`` (the phase runner), ``shipped_base`` (the
base model shipped in ``training/demo_base/``), ``variants`` (the variant registry), ``train`` (building the
base, training the variants), ``siblings`` (sibling share of in-batch negatives),
``evaluation`` (scores, premise, export), ``data`` (the data a run uses), ``report`` (tables, gaps,
curves), ``run`` (``run_demo``). The names below were those of the
former module ``finedefics_training.demo`` and stay importable from here; to patch one, patch the
module that defines it, since the others import it from there.
"""

from .data import make_data
from .evaluation import (
                         EVAL_MODES,
                         EVAL_OPTION_SEED,
                         SCORES_FILE,
                         evaluate_models,
                         export_model,
                         load_scores,
                         measure_premise,
)
from .phases import PhaseProgress, Phases
from .plan import (
                         BASE_FIELDS,
                         MAY_BE_ZERO,
                         RATIOS,
                         DemoPlan,
                         apply_overrides,
                         base_recipe,
                         check_plan_value,
                         default_plan,
                         quick_plan,
)
from .run import VARIANTS, run_demo
from .shipped_base import (
                         BUILD_FILE,
                         SHIPPED_BASE,
                         copy_shipped_base,
                         record_build,
                         shipped_base_dir,
                         shipped_base_for,
                         weights_digest,
)
from .train import (
                         build_base,
                         make_base_dataset,
                         make_initial_model,
                         pretrain_vision_phase,
                         train_phase,
                         train_variants,
)

__all__ = [
    "BASE_FIELDS", "BUILD_FILE", "EVAL_MODES", "EVAL_OPTION_SEED", "MAY_BE_ZERO", "RATIOS", "SCORES_FILE",
    "SHIPPED_BASE", "VARIANTS", "DemoPlan", "PhaseProgress", "Phases", "apply_overrides", "base_recipe", "build_base",
    "check_plan_value", "copy_shipped_base", "default_plan", "evaluate_models", "export_model", "load_scores",
    "make_base_dataset", "make_data", "make_initial_model", "measure_premise", "pretrain_vision_phase",
    "quick_plan", "record_build", "run_demo", "shipped_base_dir", "shipped_base_for", "train_phase", "train_variants",
    "weights_digest",
]
