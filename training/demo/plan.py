"""The demo's plan: the sizes of one run, the shipped plans, and ``--set`` overrides checked on arrival."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class DemoPlan:
    """Sizes of one demo run; ``default_plan()`` and ``quick_plan()`` are the shipped ones.

    Fields before ``stage1_steps`` define the base model (see ``BASE_FIELDS``): a plan whose base fields
    equal those recorded with the shipped base starts from it instead of building one.
    """

    backbone: str = "idefics2"  # a model family (modeling_finedefics.families); the shipped base is Idefics2's
    synth: dict = field(default_factory=dict)
    preset: str = "tiny"
    image_seq_len: int = 8
    base_seed: int = 0
    pool_size: int = 20000
    vision_steps: int = 3000
    vision_batch_size: int = 64
    vision_learning_rate: float = 2e-3
    caption_images: int = 6000
    choice_images: int = 3000
    base_steps: int = 2000
    base_batch_size: int = 16
    base_learning_rate: float = 1e-3
    knowledge_repeats: int = 20
    base_freeze_vision_tower: bool = True
    base_bf16: bool = True  # the captioning stage of the shipped base trained under bf16 autocast (TRL's default)
    # Multiple choice in text (word lookups, then categories named or described among their siblings): off in the
    # shipped base. Measured (README, "multiple choice in text"): 4000 named choices teach the named form (99%),
    # never the described one, and without captioning replayed the base forgets how to describe images.
    lookup_steps: int = 0
    choice_steps: int = 0
    choice_batch_size: int = 32
    choice_learning_rate: float = 1e-3
    choice_lookup_share: float = 0.5
    # Share of the category-choice phase's rows that replay the captioning stage's image rows (captions and
    # description choices), so that learning to answer in letters does not erase describing images.
    choice_caption_share: float = 0.0
    stage1_steps: int = 200
    stage2_steps: int = 200
    batch_size: int = 16
    learning_rate: float = 5e-4
    freeze_vision_tower: bool = True
    closed_set_ratio: float = 0.5
    eval_batch_size: int = 32
    premise_images: int = 560
    save_steps: int = 100


BASE_FIELDS = ("backbone", "synth", "preset", "image_seq_len", "base_seed", "pool_size", "vision_steps",
               "vision_batch_size", "vision_learning_rate", "caption_images", "choice_images", "base_steps",
               "base_batch_size", "base_learning_rate", "knowledge_repeats", "base_freeze_vision_tower", "base_bf16",
               "lookup_steps", "choice_steps", "choice_batch_size", "choice_learning_rate", "choice_lookup_share",
               "choice_caption_share")


def default_plan() -> DemoPlan:
    return DemoPlan()


def own_data_plan() -> DemoPlan:
    """``demo --data``: the default plan with a base built to fit the budget (README, "Your own data").

    The default plan's captioning stage trains under bf16 autocast only so that ``--rebuild-base`` reproduces
    the shipped base bit for bit; a base built for other data has nothing to reproduce, and on a CPU without
    native bf16 that autocast made each step several times slower. 1000 float32 steps (batch 16) are 25 passes
    over 600 training images. ``--set base_steps=2000`` is the longer build."""
    return DemoPlan(base_steps=1000, base_bf16=False)


def plan_for(quick: bool, own_data: bool) -> DemoPlan:
    """The shipped plan a run starts from: ``--quick``'s, ``--data``'s, or the default benchmark's."""
    return quick_plan() if quick else own_data_plan() if own_data else default_plan()


def quick_plan() -> DemoPlan:
    """A smoke test of every phase in about a minute: a micro model whose premise is NOT expected to hold."""
    return DemoPlan(
        synth=dict(num_genera=4, species_per_genus=3, train_per_category=16, rare_train_per_category=3,
                   validation_per_category=2, test_per_category=6),
        preset="micro", pool_size=1200, vision_steps=60, vision_batch_size=32, caption_images=400, choice_images=200,
        base_steps=120,
        base_batch_size=8, knowledge_repeats=2, base_bf16=False, choice_batch_size=8,
        stage1_steps=40, stage2_steps=40, batch_size=8, eval_batch_size=16,
        premise_images=24, save_steps=50,
    )


def apply_overrides(plan: DemoPlan, overrides: dict[str, str]) -> DemoPlan:
    """``{"stage1_steps": "600"}`` -> a plan with that field changed (values parsed as YAML scalars).

    Each value is checked against the field's type and range here, so a bad ``--set`` fails at once
    rather than minutes later, in the phase that first reads it.
    """
    import yaml

    known = set(DemoPlan.__dataclass_fields__)
    for key, value in overrides.items():
        if key not in known:
            raise ValueError(f"unknown demo setting {key!r}; known: {', '.join(sorted(known))}")
        value = yaml.safe_load(value) if isinstance(value, str) else value
        if DemoPlan.__dataclass_fields__[key].type == "float" and isinstance(value, str):
            value = _float_or_text(value)  # YAML 1.1 reads "2e-3" (no dot) as text; Python reads it as 0.002
        check_plan_value(key, value)
        setattr(plan, key, value)
    return plan


def _float_or_text(value: str):
    try:
        return float(value)
    except ValueError:
        return value


# Plan fields that may be 0 (every other int counts steps, images or a batch, and must be at least 1).
MAY_BE_ZERO = ("base_seed", "knowledge_repeats", "lookup_steps", "choice_steps")
RATIOS = ("closed_set_ratio", "choice_lookup_share", "choice_caption_share")


def check_plan_value(key: str, value) -> None:
    """A clear error when ``value`` does not fit ``DemoPlan.<key>`` (its type, and its range where it has one)."""
    kind = DemoPlan.__dataclass_fields__[key].type  # a string: annotations are postponed in this module
    if kind == "int" and (isinstance(value, bool) or not isinstance(value, int)):
        raise ValueError(f"demo setting {key} must be an integer, got {value!r}")
    if kind == "float" and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise ValueError(f"demo setting {key} must be a number, got {value!r}")
    if kind == "bool" and not isinstance(value, bool):
        raise ValueError(f"demo setting {key} must be true or false, got {value!r}")
    if kind == "str" and not isinstance(value, str):
        raise ValueError(f"demo setting {key} must be a string, got {value!r}")
    if kind == "dict" and not isinstance(value, dict):
        raise ValueError(f"demo setting {key} must be a mapping, got {value!r}")
    if key == "backbone":
        from modeling_finedefics.families import FAMILIES

        if value not in FAMILIES:
            raise ValueError(f"demo setting backbone must be a model family ({', '.join(FAMILIES)}), got {value!r}")
    if kind == "int" and value < (0 if key in MAY_BE_ZERO else 1):
        raise ValueError(f"demo setting {key} must be at least {0 if key in MAY_BE_ZERO else 1}, got {value}")
    if kind == "float" and key in RATIOS and not 0 <= value <= 1:
        raise ValueError(f"demo setting {key} must be between 0 and 1, got {value}")
    if kind == "float" and key not in RATIOS and value <= 0:
        raise ValueError(f"demo setting {key} must be positive, got {value}")


# Plan fields only some runs read, and the reason a run that does not read them gives.
SYNTHETIC_ONLY = ("pool_size", "vision_steps", "vision_batch_size", "vision_learning_rate", "caption_images",
                  "choice_images")
# The settings of the base's multiple-choice phases: those of both (word lookups and category choices), and
# those of the category choices alone.
CHOICE_PHASES = ("choice_batch_size", "choice_learning_rate")
CATEGORY_CHOICE_PHASE = ("choice_lookup_share", "choice_caption_share")


def recorded_plan(plan: DemoPlan, synthetic: bool, shipped_base: bool) -> tuple[dict, dict]:
    """``(settings the run used, {field: why it was not used})``: what report.json records as the plan, so that a
    ``--data`` run does not list the vision pre-training it skipped, nor a run from the shipped base the sizes of
    a base it did not build."""
    unused = {}
    if shipped_base:
        unused.update({name: "the shipped base was used (its build record holds the recipe)"
                       for name in BASE_FIELDS if name != "backbone"})
    else:
        if not synthetic:
            unused.update({name: "no attribute pool for a dataset's own images: the base is built on its training "
                                 "rows, without vision pre-training" for name in SYNTHETIC_ONLY})
        if not plan.choice_steps:
            unused.update({name: "choice_steps is 0: no category-choice phase" for name in CATEGORY_CHOICE_PHASE})
        if not plan.choice_steps and not plan.lookup_steps:
            unused.update({name: "lookup_steps and choice_steps are 0: no multiple-choice phase"
                           for name in CHOICE_PHASES})
    used = {name: value for name, value in asdict(plan).items() if name not in unused}
    return used, unused


def base_recipe(plan: DemoPlan, data_identity: dict) -> dict:
    """What determines the base model: the base fields of the plan and the data it is built on."""
    return {"plan": {name: getattr(plan, name) for name in BASE_FIELDS}, "data": data_identity}
