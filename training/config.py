"""Configuration of a Finedefics training run: a TRL ``SFTConfig`` plus the alignment settings.

Kept beside ``trainer.py`` as TRL keeps ``SFTConfig`` beside ``SFTTrainer``. Every field can be set in a
YAML recipe or on the command line (``finedefics train --config recipe.yaml --stage 2``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from trl import SFTConfig

# Numeric settings and the range each must lie in: (lowest, highest, whether the lowest is allowed). A value out
# of range (or NaN / inf) used to end in a ZeroDivisionError deep in Trainer, or worse in a run that exits 0 with
# NaN weights; it is now refused when the recipe is parsed, before any weight loads.
_POSITIVE, _NON_NEGATIVE, _AT_LEAST_ONE = (0.0, math.inf, False), (0.0, math.inf, True), (1, math.inf, True)
NUMERIC_RANGES = {
    "learning_rate": _POSITIVE, "adam_epsilon": _POSITIVE, "num_train_epochs": _NON_NEGATIVE,
    "gradient_accumulation_steps": _AT_LEAST_ONE, "per_device_train_batch_size": _AT_LEAST_ONE,
    "per_device_eval_batch_size": _AT_LEAST_ONE, "max_length": _AT_LEAST_ONE,
    "weight_decay": _NON_NEGATIVE, "max_grad_norm": _NON_NEGATIVE, "warmup_steps": _NON_NEGATIVE,
    "logging_steps": _POSITIVE, "save_steps": _POSITIVE, "eval_steps": _POSITIVE,
    "label_smoothing_factor": (0.0, 1.0, True), "adam_beta1": (0.0, 1.0, True), "adam_beta2": (0.0, 1.0, True),
    "init_temperature": _POSITIVE, "object_attribute_weight": _NON_NEGATIVE,
    "attribute_category_weight": _NON_NEGATIVE, "category_category_weight": _NON_NEGATIVE,
    "object_category_weight": _NON_NEGATIVE,
}


def check_numeric_range(owner: object, name: str, lowest: float, highest: float, lowest_allowed: bool) -> None:
    """A named ValueError when ``owner.name`` (None: unset, allowed) is not finite or lies outside its range."""
    value = getattr(owner, name, None)
    if value is None or isinstance(value, bool):
        return
    below = value < lowest if lowest_allowed else value <= lowest
    if not math.isfinite(value) or below or value > highest:
        low = f"{'>=' if lowest_allowed else '>'} {lowest:g}"
        high = "" if math.isinf(highest) else f" and <= {highest:g}"
        raise ValueError(f"{name} must be a finite number {low}{high}, got {value}")


@dataclass
class FinedeficsTrainingConfig(SFTConfig):
    r"""
    [`SFTConfig`] for [`FinedeficsTrainer`], with the attribute-augmented alignment settings.

    Parameters:
        stage (`int`, defaults to 1):
            1: instruction tuning on attribute descriptions + the three attribute contrastive terms.
            2: classification-centred instruction tuning (LM loss only).
        object_attribute_weight, attribute_category_weight, category_category_weight (`float`, defaults to 0.5):
            Weights of the paper's contrastive terms in ``L = L_lm + w_oa L_oa + w_ac L_ac + w_cc L_cc (+ w_oc L_oc)``.
        object_category_weight (`float`, defaults to 0.0):
            Weight of the object-category term ``L_oc`` (image <-> category name, the image side also seeing the
            negative names; not one of the paper's terms). Every term is read by name, ``<term>_weight`` for each
            term of ``finedefics_training.losses.CONTRASTIVE_TERMS``; a term of weight 0 is not computed.
        use_attribute_descriptions (`bool`, defaults to `True`):
            False trains as if the data had no attribute descriptions (the paper's "without attribute
            descriptions" ablation): every row is treated as having none, so stage I asks it the open-set naming
            question (description rows with their own question included), no description or negative
            description enters the contrastive batch, and the terms that need descriptions (object-attribute,
            attribute-category) cannot be formed and are not used, whatever their weights. The ablation is stage I
            with ``object_category_weight`` and ``category_category_weight`` only.
        stage1_recognition_ratio (`float`, defaults to 0.0):
            In stage I, the share of rows (chosen per example with the collator's seeded per-example randomness,
            the same choice every epoch) asked stage II's recognition questions (open-set, or multiple choice as
            per ``closed_set_ratio``) instead of the description instruction; the contrastive terms still train
            on every row. The paper's "single stage" ablation is stage I with 0.5 for the steps of both stages.
        num_negatives (`int`, defaults to 3):
            Hard negatives per example, for the contrastive terms and the multiple-choice questions.
        use_hard_negatives (`bool`, defaults to `True`):
            Add the hard negatives as extra contrastive columns (turn off for the "no hard negatives" ablation).
        train_temperatures (`bool`, defaults to `True`):
            Learn the temperatures in stage I (they are always frozen in stage II, where no term uses them).
        init_temperature (`float`, *optional*):
            Reset both temperatures to this value before training (default: keep the model's).
        closed_set_ratio (`float`, defaults to 0.5):
            Share of stage II examples asked as multiple choice rather than open-set naming.
        multiple_choice_answer (`str`, defaults to `"letter"`):
            How stage II answers a multiple choice: ``letter`` ("B") or ``letter_name`` ("B. <name>"); FOCI's
            rule reads the letter either way.
        object_noun (`str`, *optional*):
            What the objects are called in the instructions ("bird", "car", "aircraft", ...). Default: the
            training data's noun (``finedefics data csv --noun``; "bird" for the synthetic benchmark), else
            the starting checkpoint's ``config.object_noun``. The noun used is stored in the checkpoint.
        object_noun_plural (`str`, *optional*):
            Its plural, where the regular English rule (-s, -es, -ies) is wrong (e.g. "aircraft").
        object_category_word (`str`, *optional*):
            What one of its categories is called in the open-set question ("species", "model", "breed");
            default: the data's, else the noun's default (``finedefics_data.prompts.CATEGORY_WORDS``).
        gather_with_grad (`bool`, defaults to `True`):
            Under multi-process training, gather embeddings from all ranks with gradients so every rank sees
            every negative.
    """

    stage: int = field(default=1,
                       metadata={"help": "1 = attribute contrastive + description tuning, 2 = recognition tuning"})
    object_attribute_weight: float = field(default=0.5, metadata={"help": "weight of the object-attribute term"})
    attribute_category_weight: float = field(default=0.5, metadata={"help": "weight of the attribute-category term"})
    category_category_weight: float = field(default=0.5, metadata={"help": "weight of the category-category term"})
    object_category_weight: float = field(default=0.0, metadata={
        "help": "weight of the object-category term (image <-> name; not one of the paper's terms)"})
    use_attribute_descriptions: bool = field(default=True, metadata={
        "help": "false = train as if the data had no attribute descriptions (an ablation)"})
    stage1_recognition_ratio: float = field(default=0.0, metadata={
        "help": "share of stage I rows asked stage II's recognition questions instead of the description instruction"})
    num_negatives: int = field(default=3, metadata={"help": "hard negatives per example"})
    use_hard_negatives: bool = field(default=True,
                                     metadata={"help": "use hard negatives as extra contrastive columns"})
    train_temperatures: bool = field(default=True, metadata={"help": "learn the temperatures in stage I"})
    init_temperature: float | None = field(default=None, metadata={"help": "reset the temperatures before training"})
    closed_set_ratio: float = field(default=0.5, metadata={"help": "share of multiple-choice questions in stage II"})
    multiple_choice_answer: str = field(default="letter", metadata={
        "help": "how stage II answers a multiple choice: letter ('B') or letter_name ('B. <name>')"})
    object_noun: str | None = field(default=None, metadata={
        "help": "what the objects are called in the instructions (default: the data's noun, else the model's)"})
    object_noun_plural: str | None = field(default=None, metadata={"help": "its plural, where -s/-es/-ies is wrong"})
    object_category_word: str | None = field(default=None, metadata={
        "help": "what one of its categories is called in the open-set question (species, model, breed, ...)"})
    gather_with_grad: bool = field(default=True, metadata={"help": "gather negatives across ranks with gradients"})

    def __post_init__(self):
        for name, bounds in NUMERIC_RANGES.items():
            check_numeric_range(self, name, *bounds)
        # Columns such as `attribute` and `neg_categories` are read by the collator, not the model.
        self.remove_unused_columns = False
        # TRL turns checkpointing on through `gradient_checkpointing`, a name transformers deprecates (a
        # FutureWarning on every run). Keep TRL's default under the current name; a recipe that still
        # sets the old name gets the warning it deserves.
        if self.activation_checkpointing is None and self.gradient_checkpointing is True:
            self.activation_checkpointing, self.gradient_checkpointing = True, None
        self.dataset_kwargs = {**(self.dataset_kwargs or {}), "skip_prepare_dataset": True}
        from .engines import adapt_to_cpu_processes

        adapt_to_cpu_processes(self)  # DeepSpeed / FSDP on CPU processes: before super() sets up the devices
        super().__post_init__()
        if self.max_steps == 0:
            raise ValueError("max_steps is 0: no optimizer step would run and final/ would be the untrained model; "
                             "set max_steps > 0, or -1 to train num_train_epochs epochs")
        if self.max_steps < 0 and self.num_train_epochs <= 0:
            raise ValueError(f"num_train_epochs is {self.num_train_epochs} and max_steps is unset: nothing would be "
                             "trained; set num_train_epochs > 0 or max_steps > 0")
        if self.stage not in (1, 2):
            raise ValueError(f"stage must be 1 or 2, got {self.stage}")
        if self.num_negatives < 0:
            raise ValueError(f"num_negatives must be >= 0, got {self.num_negatives}")
        if not 0.0 <= self.closed_set_ratio <= 1.0:
            raise ValueError(f"closed_set_ratio must be in [0, 1], got {self.closed_set_ratio}")
        if not 0.0 <= self.stage1_recognition_ratio <= 1.0:
            raise ValueError(f"stage1_recognition_ratio must be in [0, 1], got {self.stage1_recognition_ratio}")
        if self.multiple_choice_answer not in ("letter", "letter_name"):
            raise ValueError("multiple_choice_answer must be 'letter' or 'letter_name', got "
                             f"{self.multiple_choice_answer!r}")

    @property
    def needs_descriptions(self) -> bool:
        """Whether a contrastive term that needs attribute descriptions weighs more than 0 in this run."""
        from .losses import CONTRASTIVE_TERMS

        return any(weight > 0 and CONTRASTIVE_TERMS[name].needs_descriptions
                   for name, weight in self.contrastive_weights.items())

    @property
    def contrastive_weights(self) -> dict[str, float]:
        """``{term name: weight}`` for every registered contrastive term (``<term>_weight``); without attribute
        descriptions, the terms that need them weigh 0 (they cannot be formed)."""
        from .losses import CONTRASTIVE_TERMS

        return {name: 0.0 if term.needs_descriptions and not self.use_attribute_descriptions
                else float(getattr(self, f"{name}_weight")) for name, term in CONTRASTIVE_TERMS.items()}
