"""The demo's variants: a registry of name -> training stages (from the base model) with their settings.

Every variant starts from the same base model and trains on the same data; a stage starts from the previous
stage's ``final/``. Steps are given as plan fields, so each variant's schedule follows ``--set``:

=============================  =====================================================================  ===========
variant                        stages                                                                 default run
=============================  =====================================================================  ===========
``finedefics``                 stage I (stage1_steps), then stage II (stage2_steps)                   yes
``instruction_tuning``         stage II only, stage1 + stage2 steps: EQUAL TOTAL optimizer steps      yes
``instruction_tuning_stage2``  stage II only, stage2_steps: EQUAL STAGE II steps (the paper's          yes
                               protocol: Finedefics = stage I + the baseline's stage II)
``no_hard_negatives``          stage I with in-batch negatives only, then stage II                    ablations
``no_attribute_descriptions``  stage I without descriptions (object-category 0.5 + category-category  ablations
                               0.5 only; rows asked their name), then stage II
``single_stage``               one stage I run, stage1 + stage2 steps, half its rows asked stage II's  ablations
                               recognition questions (stage1_recognition_ratio 0.5)
``finedefics_generated``       as ``finedefics``, on descriptions the base generated                  --descriptions
                               (``descriptions.py``) instead of the benchmark's ground truth          generated
=============================  =====================================================================  ===========

``--ablations`` runs the first six: the paper's ablation table in miniature. Each stage is a phase of its own
(``seed N: <phase>`` in ``state.json``), so an interrupted demo resumes where it stopped; the phase and folder
names of the first three variants the demo ever had are kept, so older runs resume too.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class VariantStage:
    phase: str  # the phase's name after "seed N: " (recorded in state.json)
    folder: str  # runs/seed-N/<folder>
    stage: int  # 1 or 2
    steps: tuple[str, ...]  # plan fields whose sum is the stage's optimizer steps
    settings: dict = field(default_factory=dict)  # FinedeficsTrainingConfig fields of this stage
    descriptions: str = "benchmark"  # the training data's descriptions: "benchmark" or "generated"

    def steps_of(self, plan) -> int:
        return sum(getattr(plan, name) for name in self.steps)


@dataclass(frozen=True)
class Variant:
    name: str
    title: str  # its row in the ablation table
    stages: tuple[VariantStage, ...]
    comparison: str  # what "finedefics - <name>" measures, in a sentence
    kind: str  # "method", "baseline" or "ablation"
    protocol: str = ""  # the gap table's protocol column: how the two schedules compare


STAGE1 = ("stage1_steps",)
STAGE2 = ("stage2_steps",)
TOTAL = ("stage1_steps", "stage2_steps")
NO_DESCRIPTIONS = dict(use_attribute_descriptions=False, object_category_weight=0.5, object_attribute_weight=0.0,
                       attribute_category_weight=0.0, category_category_weight=0.5)

VARIANTS: dict[str, Variant] = {variant.name: variant for variant in (
    Variant("finedefics", "Finedefics",
            (VariantStage("finedefics stage I", "finedefics-1", 1, STAGE1),
             VariantStage("finedefics stage II", "finedefics-2", 2, STAGE2)),
            "-", "method"),
    Variant("instruction_tuning", "instruction tuning only (equal total steps)",
            (VariantStage("instruction tuning", "instruction-tuning", 2, TOTAL),),
            "baseline, equal total optimizer steps (stage II for stage I + stage II steps)", "baseline",
            "equal total steps"),
    Variant("instruction_tuning_stage2", "instruction tuning only (equal stage II steps)",
            (VariantStage("instruction tuning, stage II steps", "instruction-tuning-stage2", 2, STAGE2),),
            "baseline, equal stage II steps (the paper's protocol: Finedefics adds stage I)", "baseline",
            "equal stage II steps"),
    Variant("no_hard_negatives", "w/o hard negatives",
            (VariantStage("no hard negatives stage I", "no-hn-1", 1, STAGE1, dict(use_hard_negatives=False)),
             VariantStage("no hard negatives stage II", "no-hn-2", 2, STAGE2)),
            "ablation, same schedule: stage I with in-batch negatives only", "ablation", "same schedule"),
    Variant("no_attribute_descriptions", "w/o attribute descriptions",
            (VariantStage("no attribute descriptions stage I", "no-attr-1", 1, STAGE1, NO_DESCRIPTIONS),
             VariantStage("no attribute descriptions stage II", "no-attr-2", 2, STAGE2)),
            "ablation, same schedule: stage I without descriptions (object-category + category-category terms)",
            "ablation", "same schedule"),
    Variant("single_stage", "single stage",
            (VariantStage("single stage", "single-stage", 1, TOTAL, dict(stage1_recognition_ratio=0.5)),),
            "ablation, equal total steps: one stage I run, half its rows asked recognition questions", "ablation",
            "equal total steps"),
    Variant("finedefics_generated", "Finedefics (generated descriptions)",
            (VariantStage("finedefics generated descriptions stage I", "finedefics-generated-1", 1, STAGE1,
                          descriptions="generated"),
             VariantStage("finedefics generated descriptions stage II", "finedefics-generated-2", 2, STAGE2,
                          descriptions="generated")),
            "same schedule, descriptions generated by the base instead of the benchmark's", "descriptions",
            "same schedule"),
)}

DEFAULT_VARIANTS = ("finedefics", "instruction_tuning", "instruction_tuning_stage2")
ABLATION_VARIANTS = ("finedefics", "instruction_tuning", "instruction_tuning_stage2", "no_hard_negatives",
                     "no_attribute_descriptions", "single_stage")
# The ablation table's rows, in the paper's order.
ABLATION_TABLE_ORDER = ("finedefics", "finedefics_generated", "no_attribute_descriptions", "no_hard_negatives",
                        "single_stage", "instruction_tuning_stage2", "instruction_tuning")


def resolve_variants(names=None) -> tuple[str, ...]:
    """The variants to run, in registry order, ``finedefics`` always among them (every comparison is against it).

    An unknown name is an error naming it and the known ones (raised before anything runs)."""
    names = list(DEFAULT_VARIANTS if names is None else names)
    unknown = [name for name in names if name not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown demo variant(s) {', '.join(map(repr, unknown))}; known: {', '.join(VARIANTS)}")
    chosen = {"finedefics", *names}
    return tuple(name for name in VARIANTS if name in chosen)


def needs_generated_descriptions(names) -> bool:
    """Whether any of the variants ``names`` trains on the base's generated descriptions."""
    return any(stage.descriptions == "generated" for name in names for stage in VARIANTS[name].stages)


def describe_variant(name: str, plan) -> str:
    """``stage I (40 steps) -> stage II (40 steps)``, with each stage's settings."""
    parts = []
    for stage in VARIANTS[name].stages:
        settings = ", ".join(f"{key}={value}" for key, value in stage.settings.items())
        parts.append(f"stage {'I' * stage.stage} ({stage.steps_of(plan)} steps{'; ' + settings if settings else ''})")
    return " -> ".join(parts)
