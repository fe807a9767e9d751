"""The demo's training phases: the base model built from scratch (when the shipped one does not fit),
and the variants (``variants.VARIANTS``) trained from it."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from .phases import PhaseProgress, Phases
from .plan import DemoPlan
from .variants import DEFAULT_VARIANTS, VARIANTS

# One logger for the whole demo, as when it was one module: the console lines keep their
# "finedefics_training.demo:" prefix.
logger = logging.getLogger(__package__)


def make_initial_model(data, model_dir: Path, plan: DemoPlan) -> None:
    """A tiny model whose tokenizer knows the data's words and whose config records the data's noun."""
    from modeling_finedefics.families import FAMILIES

    from ..init_model import init_model

    corpus = data.text_corpus() if data.synth_config is not None else None
    if model_dir.exists():
        shutil.rmtree(model_dir)  # left by an interrupted run (the phase was not recorded as done)
    if not FAMILIES[plan.backbone].sized_tiny:  # most families' tiny models have one size (see init_model)
        init_model([data.training_dir], model_dir, noun=data.noun, seed=plan.base_seed, corpus=corpus,
                   family=plan.backbone)
        return
    init_model([data.training_dir], model_dir, preset=plan.preset, noun=data.noun, image_size=data.image_size,
               seed=plan.base_seed, image_seq_len=plan.image_seq_len, corpus=corpus)


def pretrain_vision_phase(data, model_dir: Path, work_dir: Path, plan: DemoPlan) -> dict:
    from finedefics_data.synth import ATTRIBUTES
    from modeling_finedefics import FinedeficsConfig

    from .base import attribute_pool, pretrain_vision

    patch_size = FinedeficsConfig.from_pretrained(model_dir).vision_config.patch_size
    pool = attribute_pool(plan.pool_size, data.synth_config, patch_size=patch_size)
    accuracy = pretrain_vision(model_dir, work_dir, pool, ATTRIBUTES, plan.vision_steps, plan.vision_batch_size,
                               plan.vision_learning_rate, plan.base_seed,
                               progress=PhaseProgress("base: vision pre-training"))
    (work_dir / "probe_accuracy.json").write_text(json.dumps(accuracy, indent=1))
    return accuracy


def make_base_dataset(data, output_dir: Path, plan: DemoPlan) -> None:
    """Captioning and description-choice rows (pool images; the training images without a pool) + text-only
    category knowledge (rare categories included)."""
    import datasets

    from finedefics_data.prompts import describe_instruction

    from .base import attribute_pool, base_dataset, category_descriptions, description_choice_rows, knowledge_rows

    describe = describe_instruction(data.noun)
    if data.synth_config is not None:
        # Pool images after those of the vision pre-training: captioning and choices see new birds.
        captions = attribute_pool(plan.caption_images, data.synth_config, start=plan.pool_size)
        choices = attribute_pool(plan.choice_images, data.synth_config, start=plan.pool_size + plan.caption_images)
        image_rows = [(image, describe, caption) for image, caption in zip(captions.images, captions.captions)]
        choice_rows = description_choice_rows(choices, data.noun, seed=plan.base_seed)
        kinds = f"{len(image_rows)} captions, {len(choice_rows)} description choices"
        image_rows += choice_rows
    else:  # a dataset's own rows: captions of its training images only (no pool to draw choices from)
        image_rows = [(row["image"], describe, row["attribute"])
                      for row in data.splits["train"] if row.get("attribute")]
        kinds = "captions of the training rows"
    descriptions = category_descriptions(data.splits["train"], data.categories)
    knowledge = knowledge_rows(descriptions, data.noun, plan.knowledge_repeats, data.negatives(), seed=plan.base_seed)
    datasets.DatasetDict({"train": base_dataset(image_rows, knowledge)}).save_to_disk(str(output_dir))
    logger.info("base data: %d image rows (%s) + %d text-only knowledge rows", len(image_rows), kinds, len(knowledge))


def make_choice_datasets(data, output_dir: Path, plan: DemoPlan, tokenizer_dir: Path,
                         caption_data_dir: Path | None = None) -> None:
    """Text-only multiple choice in FOCI's layout: word lookups (``lookup/``), then the categories named or
    described among their hard negatives, with the knowledge rows replayed (``choice/``) and, when
    ``plan.choice_caption_share`` is above 0, the captioning stage's image rows (from ``caption_data_dir``)
    making up that share of the choice phase's rows."""
    import datasets

    from modeling_finedefics import FinedeficsProcessor

    from .base import (
        base_dataset,
        category_choice_rows,
        category_descriptions,
        knowledge_rows,
        option_words,
        word_lookup_rows,
    )

    words = option_words(FinedeficsProcessor.from_pretrained(tokenizer_dir).tokenizer)
    lookups = word_lookup_rows(words, plan.lookup_steps * plan.choice_batch_size, seed=plan.base_seed)
    choice_rows = plan.choice_steps * plan.choice_batch_size
    replayed_images = round(choice_rows * plan.choice_caption_share)
    choices = category_choice_rows(data.categories, data.negatives(), data.noun, choice_rows - replayed_images,
                                   seed=plan.base_seed, lookup_share=plan.choice_lookup_share)
    descriptions = category_descriptions(data.splits["train"], data.categories)
    replay = knowledge_rows(descriptions, data.noun, plan.knowledge_repeats, data.negatives(), seed=plan.base_seed + 1)
    for name, rows in (("lookup", lookups), ("choice", choices + replay)):
        if not rows or (name == "choice" and not choices):
            continue  # that phase has no steps (``lookup_steps`` or ``choice_steps`` is 0) and reads no data
        table = base_dataset([], rows)
        if name == "choice" and replayed_images:
            table = with_caption_replay(table, caption_data_dir, replayed_images, seed=plan.base_seed)
        datasets.DatasetDict({"train": table}).save_to_disk(str(output_dir / name))
    logger.info("base multiple-choice data: %d word lookups, %d category choices (%d words as options) + %d "
                "knowledge rows + %d captioning image rows replayed", len(lookups), len(choices), len(words),
                len(replay), replayed_images)


def with_caption_replay(table, caption_data_dir: Path | None, count: int, seed: int):
    """``table`` + ``count`` image rows drawn (with repetition, seeded) from the captioning stage's data."""
    import datasets
    import numpy as np

    if caption_data_dir is None or not Path(caption_data_dir).is_dir():
        raise FileNotFoundError(f"choice_caption_share needs the captioning stage's data, not found at "
                                f"{caption_data_dir}; rerun with --rebuild-base")
    captioning = datasets.load_from_disk(str(caption_data_dir))["train"]
    # Image rows carry no category (base_dataset); reading that column decodes no image.
    image_rows = [index for index, category in enumerate(captioning["category"]) if category == ""]
    if not image_rows:
        raise ValueError(f"{caption_data_dir} holds no image rows to replay (choice_caption_share > 0)")
    drawn = np.random.default_rng([seed, 0xCA97]).choice(image_rows, count, replace=True)
    replay = captioning.select([int(index) for index in drawn]).remove_columns("example_id")
    merged = datasets.concatenate_datasets([table.remove_columns("example_id"), replay])  # both base_dataset's
    return merged.add_column("example_id", list(range(len(merged))))


def build_base(data, runs_dir: Path, plan: DemoPlan, phases: Phases) -> Path:
    """Initial model -> vision pre-training (with a pool) -> captioning + knowledge stage -> multiple choice in
    text (word lookups, then categories); returns final/."""
    from modeling_finedefics.families import FAMILIES

    initial = runs_dir / "base-initial"
    phases.run("base: initial model", make_initial_model, data, initial, plan)
    if data.synth_config is not None and FAMILIES[plan.backbone].has_perceiver_resampler:
        phases.run("base: vision pre-training", pretrain_vision_phase, data, initial, runs_dir / "base-vision", plan)
    elif data.synth_config is not None:
        # The attribute pre-training trains Idefics2's vision tower and perceiver resampler through a probe
        # written for them; other backbones start captioning from their random vision tower.
        logger.info("base: no vision pre-training for the %s backbone (written for Idefics2's resampler): "
                    "the premise is not expected to hold", plan.backbone)
    phases.run("base: captioning + knowledge data", make_base_dataset, data, runs_dir / "base-data", plan)
    # The trainer warns that these rows hold no recognition question: for a base stage that is the point.
    trainer_logger = logging.getLogger("finedefics_training.trainer")
    level, trainer_logger.level = trainer_logger.level, logging.ERROR
    try:
        phases.run("base: captioning + knowledge", train_phase, initial, runs_dir / "base-data",
                   runs_dir / "base-caption", plan, stage=2, steps=plan.base_steps,
                   learning_rate=plan.base_learning_rate, seed=plan.base_seed, batch_size=plan.base_batch_size,
                   freeze_vision_tower=plan.base_freeze_vision_tower, desc="base: captioning + knowledge",
                   bf16=plan.base_bf16)
        model = runs_dir / "base-caption" / "final"
        if plan.lookup_steps or plan.choice_steps:
            phases.run("base: multiple-choice data", make_choice_datasets, data, runs_dir / "base-choice-data", plan,
                       model, runs_dir / "base-data")
        choice = dict(plan=plan, stage=2, learning_rate=plan.choice_learning_rate, seed=plan.base_seed,
                      batch_size=plan.choice_batch_size, freeze_vision_tower=plan.base_freeze_vision_tower)
        for name, steps, output in (("word lookup", plan.lookup_steps, runs_dir / "base-lookup"),
                                    ("category choice", plan.choice_steps, runs_dir / "base")):
            if steps:
                data_dir = runs_dir / "base-choice-data" / ("lookup" if output.name == "base-lookup" else "choice")
                phases.run(f"base: multiple choice in text ({name})", train_phase, model, data_dir, output,
                           steps=steps, desc=f"base: multiple choice ({name})", **choice)
                model = output / "final"
    finally:
        trainer_logger.setLevel(level)
    if model != runs_dir / "base" / "final":  # no category-choice steps: the last stage trained is the base
        shutil.copytree(model, runs_dir / "base" / "final", dirs_exist_ok=True)
    return runs_dir / "base" / "final"

def train_phase(model_dir: Path, data_dir: Path, output_dir: Path, plan: DemoPlan, stage: int, steps: int,
                learning_rate: float, seed: int, freeze_vision_tower: bool | None = None,
                batch_size: int | None = None, desc: str = "training", bf16: bool = False,
                settings: dict | None = None) -> Path:
    """One full-fine-tuning stage through the same recipe code as `finedefics train`; returns final/.

    ``settings``: further ``FinedeficsTrainingConfig`` fields (a variant's ablation switches and weights).
    ``bf16``: train under bf16 autocast (TRL's default), as the shipped base's captioning stage was built; on a
    CPU without native bf16 it makes a step many times slower, so every other phase trains in float32.
    """
    from ..recipe import DataArguments, run_stage

    model_args = demo_model_arguments(model_dir, plan, freeze_vision_tower)
    args = demo_training_config(output_dir, plan, stage=stage, steps=steps, learning_rate=learning_rate, seed=seed,
                                batch_size=batch_size, bf16=bf16, **(settings or {}))
    return run_stage(model_args, DataArguments(dataset_dir=str(data_dir)), args, progress=PhaseProgress(desc))


def demo_model_arguments(model_dir: Path, plan: DemoPlan, freeze_vision_tower: bool | None = None):
    """The demo's model settings: full fine-tuning in float32, the vision tower frozen unless the plan says not."""
    from ..recipe import ModelArguments

    if freeze_vision_tower is None:
        freeze_vision_tower = plan.freeze_vision_tower
    return ModelArguments(model_name_or_path=str(model_dir), tuning="full", torch_dtype="float32",
                          freeze_vision_tower=freeze_vision_tower)


def demo_training_config(output_dir: Path, plan: DemoPlan, stage: int, steps: int, learning_rate: float, seed: int,
                         use_hard_negatives: bool = True, batch_size: int | None = None, bf16: bool = False,
                         **overrides):
    """The training settings of one demo phase (``overrides``: other ``FinedeficsTrainingConfig`` fields, as
    ``benchmarks/bench_demo_step.py`` sets them to time the former settings).

    float32 unless ``bf16``: TRL's default bf16 autocast runs a matrix product of the LM head's size 8x slower on
    a CPU without native bf16 (AVX2 only), which made a demo step 7-40x slower (``benchmarks/bench_demo_step.py``).
    No activation checkpointing: the tiny model's activations take tens of MiB, and recomputing every decoder
    layer's forward during backward cost a tenth of each step for no memory worth saving. The losses and weights
    are the same with or without it (recomputation runs the same operations on the same inputs).
    """
    from ..config import FinedeficsTrainingConfig

    settings = dict(
        output_dir=str(output_dir), stage=stage, max_steps=steps,
        per_device_train_batch_size=batch_size or plan.batch_size,
        learning_rate=learning_rate, lr_scheduler_type="cosine", warmup_steps=max(1, steps // 20),
        weight_decay=0.01, logging_steps=max(1, min(10, steps // 10)), save_strategy="steps",
        save_steps=plan.save_steps, save_total_limit=1, report_to="none", seed=seed, data_seed=seed,
        use_cpu=True, dataloader_num_workers=0, use_hard_negatives=use_hard_negatives, num_negatives=3,
        closed_set_ratio=plan.closed_set_ratio, activation_checkpointing=False, bf16=bf16,
    )
    return FinedeficsTrainingConfig(**{**settings, **overrides})


def train_variants(base: Path, data_dirs: dict[str, Path], runs_dir: Path, plan: DemoPlan, seed: int, phases: Phases,
                   variants=DEFAULT_VARIANTS) -> dict:
    """The named variants (``variants.VARIANTS``) from ``base``; returns {variant: (final dir, stage dirs)}.

    ``data_dirs``: the training data folder per description source (``{"benchmark": ..., "generated": ...}``).
    Each stage is one phase (``seed N: <phase>``); a variant's later stage starts from its previous stage."""
    prefix = f"seed {seed}: "
    run = runs_dir / f"seed-{seed}"
    trained = {}
    for name in variants:
        source, stage_dirs = base, []
        for stage in VARIANTS[name].stages:
            output = run / stage.folder
            phases.run(prefix + stage.phase, train_phase, source, data_dirs[stage.descriptions], output, plan,
                       stage=stage.stage,
                       steps=stage.steps_of(plan), learning_rate=plan.learning_rate, seed=seed,
                       desc=prefix + stage.phase, settings=dict(stage.settings))
            source = output / "final"
            stage_dirs.append(output)
        trained[name] = (source, stage_dirs)
    return trained
