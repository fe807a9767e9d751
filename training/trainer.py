"""``FinedeficsTrainer``: TRL's ``SFTTrainer`` plus the attribute contrastive terms of Finedefics stage I.

    loss = L_lm + w_oa * L_oa + w_ac * L_ac + w_cc * L_cc (+ w_oc * L_oc)    (stage I)
    loss = L_lm                                                              (stage II)

(each term by name, ``<term>_weight`` in the config; a term of weight 0 is not computed).

``L_lm`` is the next-token loss on answer tokens only (prompt, image and padding tokens are masked by
the collator); over an optimiser step it weighs every answer token alike, however the step is split into
accumulated micro-batches and ranks (``num_items_in_batch``, as in ``Trainer``). The contrastive terms
are computed from ONE extra decoder pass inside the model's forward: the image summaries reuse the
image features of the main pass (the vision tower runs once), and every text of the step
(descriptions, negative descriptions, category names, negative names) shares that pass. Every model
family trains this way: Idefics2 builds its image-summary rows from its resampled features; the other
families (Idefics3, SmolVLM, Qwen2-VL, Qwen2.5-VL, LLaVA) take the rows the collator builds with
``processor.image_embedding_inputs`` (``summary_input_ids``), run through their base model with the
main pass's vision features. Each
micro-batch's terms cover the global batch of all ranks (gathered with gradients, see ``losses.py``)
and are averaged over accumulated micro-batches.
Every term, the temperatures and how often a term had to be skipped are logged each step.

Before training, the trainer states how many rows of each kind (``data/kinds.py``) the stage trains
and how, refuses rows the stage cannot train (naming them), and warns loudly when a stage II run would
see no recognition question at all. The objects' noun of the questions (``object_noun``, else the
model's ``config.object_noun``) is written into the model's config, so every checkpoint records it, and so are
the category names of the training rows (``config.object_categories``, added to those an earlier stage recorded):
``finedefics app`` offers them as candidates.
"""

from __future__ import annotations

import contextlib
import logging
from collections import Counter

import torch
import torch.nn.functional as F
from trl import SFTTrainer

from finedefics_data.kinds import ASKED_BY_TRAINER, is_recognition_treatment, stage_plan
from finedefics_data.prompts import DEFAULT_NOUN, ObjectNoun

from .collator import IGNORE_INDEX, FinedeficsDataCollator
from .config import FinedeficsTrainingConfig
from .losses import CONTRASTIVE_TERMS, ContrastiveTexts, FinedeficsContrastiveLoss

logger = logging.getLogger(__name__)

STAGE_ONE_COLUMNS = ("image", "category", "attribute")
NEGATIVE_COLUMNS = ("neg_categories", "neg_attributes")


class FinedeficsTrainer(SFTTrainer):
    """Instruction tuning with Finedefics' attribute-augmented contrastive alignment.

    Args:
        model: a Finedefics model of any family (``modeling_finedefics.families``), or a PEFT model wrapping one.
        args: a [`FinedeficsTrainingConfig`].
        processing_class: the model's Finedefics processor, of its family (required: it builds the chat prompts).
        data_collator: defaults to a [`FinedeficsDataCollator`] for ``args.stage``.
        Other arguments are [`SFTTrainer`]'s.
    """

    _tag_names = ["trl", "sft", "finedefics"]
    _name = "Finedefics"

    def __init__(self, model, args: FinedeficsTrainingConfig | None = None, data_collator=None,
                 train_dataset=None, eval_dataset=None, processing_class=None, **kwargs):
        if args is None:
            args = FinedeficsTrainingConfig(output_dir="finedefics-output")
        if processing_class is None:
            raise ValueError("FinedeficsTrainer needs processing_class: the model's FinedeficsProcessor")
        if train_dataset is not None:
            check_training_columns(train_dataset, args)
        noun = training_noun(args, model)
        if data_collator is None:
            data_collator = FinedeficsDataCollator(
                processor=processing_class, stage=args.stage, num_negatives=args.num_negatives,
                closed_set_ratio=args.closed_set_ratio, multiple_choice_answer=args.multiple_choice_answer,
                noun=noun or DEFAULT_NOUN, seed=args.seed,
                max_length=args.max_length, use_attribute_descriptions=args.use_attribute_descriptions,
                stage1_recognition_ratio=args.stage1_recognition_ratio,
            )
        plan = None
        if train_dataset is not None:
            plan = describe_stage_data(train_dataset, args.stage,
                                       contrastive=getattr(data_collator, "contrastive", True),
                                       needs_descriptions=args.needs_descriptions)
        _record_noun(model, noun, plan)
        _record_categories(model, train_dataset)
        super().__init__(model=model, args=args, data_collator=data_collator, train_dataset=train_dataset,
                         eval_dataset=eval_dataset, processing_class=processing_class, **kwargs)
        # Trainer then counts the answer tokens of the whole optimiser step (every accumulated micro-batch, every
        # rank) and leaves gradient accumulation to compute_loss, which weighs each token as one large batch would.
        self.model_accepts_loss_kwargs = True
        self.contrastive_loss = FinedeficsContrastiveLoss(
            weights=args.contrastive_weights, gather_with_grad=args.gather_with_grad,
            use_hard_negatives=args.use_hard_negatives,
        )
        unusable = [name for name, term in CONTRASTIVE_TERMS.items() if term.needs_descriptions
                    and getattr(args, f"{name}_weight") and not args.use_attribute_descriptions]
        if args.stage == 1 and unusable:
            logger.warning("use_attribute_descriptions is off: the %s term(s) need descriptions and are not used "
                           "(their weights are ignored)", ", ".join(unusable))
        self._prepare_temperatures()

    # ------------------------------------------------------------------ engines
    def create_accelerator_and_postprocess(self) -> None:
        """Trainer's accelerator; an FSDP launch on CPU processes made an FSDP run (``engines``), and under FSDP
        the temperatures as 1-element vectors (FSDP shards along dim 0, which a scalar lacks)."""
        from .engines import fsdp_on_cpu_processes

        super().create_accelerator_and_postprocess()
        if fsdp_on_cpu_processes(self.accelerator):
            self.is_fsdp_enabled = True
        if self.is_fsdp_enabled:
            from modeling_finedefics.alignment import FinedeficsTemperatures

            for module in self.model.modules():
                if isinstance(module, FinedeficsTemperatures):
                    module.as_vectors()

    # ------------------------------------------------------------------ saving
    def _save(self, output_dir=None, state_dict=None):
        """Trainer's save, with the temperatures as the scalars every checkpoint stores (under ZeRO-3 and FSDP the
        model holds them as 1-element vectors, and the gathered state dict has them so)."""
        if state_dict is not None:
            from modeling_finedefics.alignment import temperatures_as_scalars

            state_dict = temperatures_as_scalars(state_dict)
        with _unsharded_class(self.model):
            return super()._save(output_dir, state_dict=state_dict)

    # ------------------------------------------------------------------ set-up
    def _core_model(self, model=None):
        """The Finedefics model (of any family) under any DDP / PEFT wrapping."""
        model = self.accelerator.unwrap_model(model if model is not None else self.model)
        return model.get_base_model() if hasattr(model, "get_base_model") else model

    def _prepare_temperatures(self) -> None:
        core = self._core_model()
        if self.args.init_temperature is not None:
            parameters = _temperature_parameters(core)
            with _gathered(parameters), torch.no_grad():  # whole on every process, written back to the shards
                for parameter in parameters:
                    parameter.fill_(-torch.log(torch.tensor(self.args.init_temperature)).item())
        trainable = self.args.stage == 1 and self.args.train_temperatures
        for parameter in _temperature_parameters(core):
            parameter.requires_grad_(trainable)

    # -------------------------------------------------------------------- loss
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mode = "train" if model.training else "eval"
        contrastive_texts = ContrastiveTexts.pop_from(inputs)
        labels = inputs.pop("labels")
        stage_one = self.args.stage == 1 and contrastive_texts is not None
        if stage_one:
            # Texts are embedded inside the model's forward (one call for DDP), reusing its image features; the
            # families that embed images from image-summary rows get those rows too (same images, same order).
            inputs.update(contrastive_texts.model_inputs())
        # No fused LM head: the contrastive terms need the forward's embeddings.
        outputs = model(**inputs, use_cache=False)
        nll_sum, answer_tokens, token_accuracy = answer_token_nll(outputs.logits, labels)
        lm_loss = nll_sum / answer_tokens.clamp(min=1)
        self._log_token_mean(mode, "lm_loss", nll_sum, answer_tokens)
        self._log_metric(mode, "mean_token_accuracy", token_accuracy)
        loss = lm_loss if num_items_in_batch is None else self._share_of_step_lm_loss(nll_sum, num_items_in_batch)
        terms = {"lm_loss": lm_loss}
        if stage_one:
            contrastive, contrastive_terms = self._contrastive_step(mode, outputs, contrastive_texts)
            terms.update(contrastive_terms)
            if num_items_in_batch is not None and model.training:
                # A per-micro-batch loss (over the global batch of all ranks): average it over accumulation.
                contrastive = contrastive / self.current_gradient_accumulation_steps
            loss = loss + contrastive
        if model.training:
            self._check_finite_terms(terms)
        return (loss, outputs) if return_outputs else loss

    def _check_finite_terms(self, terms: dict[str, torch.Tensor]) -> None:
        """Stop at the first non-finite loss term, naming it and the step: its gradient would turn every weight
        NaN and the run would still end with a final/ checkpoint (one device sync per micro-batch)."""
        values = torch.stack([value.detach().float().reshape(()) for value in terms.values()])
        if bool(torch.isfinite(values).all()):
            return
        bad = [f"{name} = {value.item()}" for name, value in zip(terms, values) if not torch.isfinite(value)]
        raise NonFiniteLossError(f"training step {self.state.global_step + 1}: non-finite loss term(s) "
                                 f"{', '.join(bad)}; stopped before the weights are updated with it (no final/ "
                                 "written): lower the learning rate or check the data of this step")

    def _share_of_step_lm_loss(self, nll_sum: torch.Tensor, num_items_in_batch) -> torch.Tensor:
        """This micro-batch's part of the step's token-mean LM loss (as ``Trainer.compute_loss`` computes it).

        ``num_items_in_batch`` counts the answer tokens of every micro-batch of the optimiser step (and of every
        rank when ``average_tokens_across_devices``, whose gradients DDP then averages: hence the rank count).
        """
        loss = nll_sum / torch.as_tensor(num_items_in_batch, device=nll_sum.device).clamp(min=1)
        if self.args.average_tokens_across_devices:
            loss = loss * self.accelerator.num_processes
        return loss

    def _contrastive_step(self, mode: str, outputs,
                          contrastive_texts: ContrastiveTexts) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if outputs.image_embeds is None:
            raise ValueError(
                f"{type(self._core_model()).__name__} returned no image embeddings: it embeds images from "
                "image-summary rows, which stage I batches must carry (summary_input_ids / summary_attention_mask, "
                "built by FinedeficsDataCollator from processor.image_embedding_inputs)")
        batch = contrastive_texts.embed(outputs.image_embeds, outputs.text_embeds)
        scales = outputs.logit_scales
        result = self.contrastive_loss(batch, scales)
        terms = {f"loss_{name}": value for name, value in result.terms.items()}
        for name in self.contrastive_loss.active_terms:  # by name: each computed term, formed or skipped
            if name in result.terms:
                self._log_metric(mode, f"loss_{name}", result.terms[name])
            self._log_metric(mode, f"skipped_{name}", torch.tensor(float(name in result.skipped)))
        for name, scale in scales.items():
            self._log_metric(mode, f"temperature_{name}", 1.0 / scale.detach())
        return result.loss, terms

    def _log_token_mean(self, mode: str, name: str, total: torch.Tensor, count: torch.Tensor) -> None:
        """Log ``total / count`` over every rank's tokens (not a mean of per-rank means: ranks hold unequal tokens)."""
        pair = torch.stack([total.detach().float(), count.float()]).reshape(1, 2).to(self.accelerator.device)
        total, count = self.accelerator.gather_for_metrics(pair).sum(dim=0).tolist()
        self._record_metric(mode, name, total / max(count, 1.0))

    def _log_metric(self, mode: str, name: str, value: torch.Tensor) -> None:
        value = value.detach().float().reshape(1).to(self.accelerator.device)
        self._record_metric(mode, name, self.accelerator.gather_for_metrics(value).mean().item())

    def _record_metric(self, mode: str, name: str, value: float) -> None:
        """Add one value of a per-step metric, as TRL's own trainers record theirs.

        The one place that touches TRL's private ``_metrics`` (``{"train"|"eval": {name: [values]}}``), which
        ``SFTTrainer.log`` averages into every logged step and then clears; Trainer offers no public way to add a
        value to a step's log from ``compute_loss``. ``tests/test_trl_contract.py`` fails if TRL changes it.
        """
        self._metrics[mode][name].append(value)


class NonFiniteLossError(ValueError):
    """A loss term of a training step is NaN or inf (a ValueError, so the CLI reports it in one line)."""


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean next-token cross-entropy over supervised (answer) tokens, and their top-1 accuracy.

    A batch without any supervised token gives a zero loss (with a gradient path), not NaN.
    """
    nll_sum, answer_tokens, accuracy = answer_token_nll(logits, labels)
    return nll_sum / answer_tokens.clamp(min=1), accuracy


def answer_token_nll(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Summed next-token cross-entropy of the supervised (answer) tokens, their count and top-1 accuracy.

    The sum (not the mean) lets accumulated micro-batches and ranks weigh every answer token alike. Without
    any supervised token the sum is a zero with a gradient path and the accuracy is 0, never NaN.
    """
    shift_logits = logits[:, :-1].float()
    shift_labels = labels[:, 1:].to(logits.device)
    mask = shift_labels != IGNORE_INDEX
    answer_tokens = mask.sum()
    if not mask.any():
        return shift_logits.sum() * 0.0, answer_tokens, torch.tensor(0.0)
    nll_sum = F.cross_entropy(shift_logits[mask], shift_labels[mask], reduction="sum")
    accuracy = (shift_logits[mask].argmax(-1) == shift_labels[mask]).float().mean()
    return nll_sum, answer_tokens, accuracy


def check_training_columns(dataset, args: FinedeficsTrainingConfig) -> None:
    """Fail before training starts when the data cannot feed the configured stage."""
    columns = set(dataset.column_names or [])
    # Stage II rows with their own questions need neither (instruction rows); describe_stage_data checks rows.
    required = [] if "question" in columns else ["image", "category"]
    if args.stage == 1:
        required = list(STAGE_ONE_COLUMNS) + (list(NEGATIVE_COLUMNS) if args.use_hard_negatives else [])
        if not args.use_attribute_descriptions:  # the descriptions are not read
            required = [column for column in required if column not in ("attribute", "neg_attributes")]
    missing = [column for column in required if column not in columns]
    if missing:
        raise ValueError(
            f"stage {args.stage} training data lacks column(s) {missing} (has {sorted(columns)}). Stage I needs "
            "attribute descriptions and hard negatives: build them with `finedefics data` or set "
            "use_hard_negatives=false."
        )


# ---------------------------------------------------------------------------------- data
STAGE_NAMES = {1: "stage I", 2: "stage II"}


def describe_stage_data(dataset, stage: int, contrastive: bool = True, needs_descriptions: bool = False
                        ) -> Counter | None:
    """Log how many rows of each kind the stage trains and how; refuse rows it cannot train.

    Stage I (with its contrastive terms) needs an image and a category on every row, and, when a term that
    needs descriptions weighs more than 0 (``needs_descriptions``), at least one row with a description. A stage II run
    whose rows hold no recognition question at all gets a loud warning: it would not teach recognition.
    Returns the plan (``{treatment: rows}``), or None for data that cannot be scanned (not a ``Dataset``).
    """
    rows = kind_rows(dataset)
    if rows is None:
        logger.debug("training data of type %s not scanned for row kinds", type(dataset).__name__)
        return None
    name = STAGE_NAMES[stage]
    plan, untrainable = stage_plan(rows, stage)
    if untrainable:
        raise ValueError(f"{name} training data: rows {_first(untrainable)} (0-based, {len(untrainable)} of "
                         f"{len(rows)}) have no question of their own and no category or no image: nothing can be "
                         "asked about them")
    if stage == 1 and contrastive:
        lacking = [i for i, row in enumerate(rows) if row["image"] is None or not row.get("category")]
        if lacking:
            raise ValueError(f"stage I training data: rows {_first(lacking)} (0-based, {len(lacking)} of {len(rows)}) "
                             "have no image or no category (instruction rows); stage I's contrastive terms need both "
                             "on every row. Give stage I its own data (stage1_dataset_dir, e.g. from pretrain.csv) "
                             "and train instruction rows in stage II")
    if stage == 1 and contrastive and needs_descriptions and not any(_described(row) for row in rows):
        raise ValueError(f"stage I training data: none of its {len(rows)} rows has an attribute description (rows "
                         f"{_first(list(range(len(rows))))} have an empty `attribute`), and the object-attribute and "
                         "attribute-category terms need them. Describe the images first (`finedefics data describe`), "
                         "or train stage I without them (use_attribute_descriptions: false)")
    logger.info("%s will train %d rows: %s", name, len(rows),
                ", ".join(f"{n} {what}" for what, n in plan.most_common()))
    if stage == 2 and not any(is_recognition_treatment(what) for what in plan):
        logger.warning("\n%s\nSTAGE II DATA HOLD NO RECOGNITION QUESTION: none of its %d rows is an open-set or "
                       "multiple-choice question about an image, and none leaves the question to the trainer (a row "
                       "with an image and a category but no question of its own, or a description row). This run "
                       "tunes on the data's own instructions only and will not teach recognition (fine for a "
                       "captioning or base stage). For recognition tuning, give rows their category, or recognition "
                       "answers that name it (see `finedefics data csv`).\n%s",
                       "!" * 100, len(rows), "!" * 100)
    return plan


def _described(row: dict) -> bool:
    return isinstance(row.get("attribute"), str) and bool(row["attribute"].strip())


def kind_rows(dataset) -> list[dict] | None:
    """The columns that decide a row's kind, with ``image`` reduced to True/None (no image is decoded)."""
    import datasets

    if not isinstance(dataset, datasets.Dataset):
        return None  # e.g. an IterableDataset: scanning it would consume it
    text_columns = [c for c in ("question", "answer", "category", "attribute") if c in dataset.column_names]
    rows = dataset.select_columns(text_columns).to_list() if text_columns else [{} for _ in range(len(dataset))]
    if "image" in dataset.column_names:
        present = dataset.select_columns(["image"]).with_format("arrow")[:]["image"].is_valid().to_pylist()
    else:
        present = [False] * len(rows)
    return [{**row, "image": True if has_image else None} for row, has_image in zip(rows, present)]


def _first(rows: list[int], shown: int = 10) -> str:
    return ", ".join(map(str, rows[:shown])) + (" ..." if len(rows) > shown else "")


def training_noun(args: FinedeficsTrainingConfig, model) -> ObjectNoun | None:
    """The objects' noun: the recipe's ``object_noun``, else the model's ``config.object_noun``, else None."""
    stored = ObjectNoun.from_config(model.config) if getattr(model, "config", None) is not None else None
    if not args.object_noun:
        return stored
    noun = ObjectNoun.of(args.object_noun, args.object_noun_plural, getattr(args, "object_category_word", None))
    if stored and stored != noun:
        logger.warning("the model was trained with the noun %r; this run asks about %r and records it instead",
                       str(stored), str(noun))
    return noun


def _record_noun(model, noun: ObjectNoun | None, plan: Counter | None) -> None:
    """Write the noun into the model's config (saved with every checkpoint), or say the default is used."""
    if noun is not None:
        for field_name, value in noun.config_fields().items():
            setattr(model.config, field_name, value)
        return
    if plan is None or any(ASKED_BY_TRAINER in what for what in plan):
        logger.warning("no object noun set (object_noun in the recipe, the data's noun, or the model's "
                       "config.object_noun): the trainer's questions say %r", DEFAULT_NOUN.singular)


def training_categories(dataset) -> list[str]:
    """The distinct non-empty ``category`` names of a ``Dataset``'s rows ([] for other data or no such column)."""
    import datasets

    if not isinstance(dataset, datasets.Dataset) or "category" not in (dataset.column_names or []):
        return []
    return [name for name in dataset.unique("category") if isinstance(name, str) and name.strip()]


def _record_categories(model, dataset) -> None:
    """Add the data's category names to ``config.object_categories`` (sorted, saved with every checkpoint)."""
    config = getattr(model, "config", None)
    names = training_categories(dataset)
    if config is None or not names:
        return
    config.object_categories = sorted(set(getattr(config, "object_categories", None) or []) | set(names))


def _temperature_parameters(core) -> list[torch.nn.Parameter]:
    """The temperatures the model uses: under LoRA, PEFT's trained copy (``modules_to_save``), not its frozen
    ``original_module``, which never gets a gradient."""
    return [parameter for name, parameter in core.named_parameters()
            if "temperatures." in name and ".original_module." not in name]


def _gathered(parameters):
    """ZeRO-3's ``GatheredParameters`` (changes made on rank 0 are kept) for partitioned parameters, else nothing."""
    if not any(hasattr(parameter, "ds_id") for parameter in parameters):
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(parameters, modifier_rank=0)


@contextlib.contextmanager
def _unsharded_class(model):
    """``model`` as an instance of its own class while it is saved.

    FSDP2 turns a sharded module's class into ``FSDP<class>``, defined in torch: ``save_pretrained`` would copy
    torch's FSDP files into the checkpoint as its model code and name that class in ``auto_map``.
    """
    sharded = type(model)
    plain = next((base for base in sharded.__bases__ if base.__name__ != "FSDPModule"), sharded)
    if plain is sharded or not any(base.__name__ == "FSDPModule" for base in sharded.__bases__):
        yield
        return
    model.__class__ = plain
    try:
        yield
    finally:
        model.__class__ = sharded
