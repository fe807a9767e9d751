"""The Finedefics recipe: load a model for full / LoRA / QLoRA training, run one stage, merge, run both.

    finedefics train --config recipes/tiny-cpu-stage1.yaml           # one stage
    finedefics two-stage --config recipes/tiny-cpu-two-stage.yaml    # stage I, merge, stage II
    finedefics two-stage --config r.yaml --stage1_dataset_dir pretrain-data --stage2_dataset_dir finetune-data

Each stage's output folder is a complete checkpoint (merged weights as safetensors, processor, model
code, README) that loads with ``AutoModelForImageTextToText.from_pretrained(..., trust_remote_code=True)``.
Multi-process runs go through ``accelerate launch`` or ``torchrun``; nothing here starts processes.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from finedefics_eval.loading import merge_saved_adapter, model_config
from finedefics_eval.loading import peft_checkpointing_deprecations as _peft_checkpointing_deprecations

from .config import FinedeficsTrainingConfig, check_numeric_range
from .trusted_code import clean_saved_auto_maps

logger = logging.getLogger(__name__)

# Kept in full precision under QLoRA and trained/saved with the adapter.
NOT_QUANTISED = ["lm_head", "image_projection", "text_projection", "temperatures"]
MODULES_TO_SAVE = ["temperatures", "image_projection", "text_projection"]


@dataclass
class ModelArguments:
    """Which model to train and how (full fine-tuning, LoRA or QLoRA)."""

    model_name_or_path: str = field(default="HuggingFaceM4/idefics2-8b",
                                    metadata={"help": "Hub id or folder of the base model"})
    tuning: str = field(default="lora", metadata={"help": "full, lora or qlora"})
    lora_r: int = field(default=8, metadata={"help": "LoRA rank"})
    lora_alpha: int = field(default=8, metadata={"help": "LoRA alpha"})
    lora_dropout: float = field(default=0.2, metadata={"help": "LoRA dropout"})
    lora_target_modules: str | None = field(
        default=None, metadata={"help": "regex of modules that get LoRA (default: the model family's decoder "
                                        "projections, Family.lora_targets; Idefics2's also the connector's)"})
    freeze_vision_tower: bool = field(default=True, metadata={"help": "keep the vision encoder frozen (full tuning)"})
    torch_dtype: str = field(default="auto", metadata={"help": "float32, bfloat16, float16 or auto"})

    def __post_init__(self):
        if self.tuning not in ("full", "lora", "qlora"):
            raise ValueError(f"tuning must be full, lora or qlora, got {self.tuning!r}")
        check_numeric_range(self, "lora_r", 1, float("inf"), True)
        check_numeric_range(self, "lora_alpha", 0.0, float("inf"), False)
        check_numeric_range(self, "lora_dropout", 0.0, 1.0, True)


@dataclass
class DataArguments:
    """Where the training data comes from; each stage may have its own (the paper's stages use different data)."""

    dataset_dir: str | None = field(default=None,
                                    metadata={"help": "folder from `finedefics data` (train/ test/ categories.json); "
                                                      "the data of both stages unless a stage has its own"})
    stage1_dataset_dir: str | None = field(default=None,
                                           metadata={"help": "stage I's data (e.g. from pretrain.csv); default "
                                                             "dataset_dir"})
    stage2_dataset_dir: str | None = field(default=None,
                                           metadata={"help": "stage II's data (e.g. from finetune.csv); default "
                                                             "dataset_dir"})
    dataset_name: str | None = field(default=None,
                                     metadata={"help": "a `datasets` dataset already carrying Finedefics columns"})
    train_split: str = field(default="train", metadata={"help": "split to train on"})
    max_train_samples: int | None = field(default=None, metadata={"help": "truncate the training set (debugging)"})

    def __post_init__(self):
        if not (self.dataset_dir or self.dataset_name or self.stage1_dataset_dir or self.stage2_dataset_dir):
            raise ValueError("give dataset_dir (a `finedefics data` folder), stage1_dataset_dir / stage2_dataset_dir, "
                             "or dataset_name")

    def for_stage(self, stage: int) -> DataArguments:
        """The data of ``stage``: its own folder if it has one, else ``dataset_dir`` / ``dataset_name``."""
        own = self.stage1_dataset_dir if stage == 1 else self.stage2_dataset_dir
        if own:
            return replace(self, dataset_dir=own, dataset_name=None)
        if not (self.dataset_dir or self.dataset_name):
            raise ValueError(f"no data for stage {stage}: give stage{stage}_dataset_dir or dataset_dir")
        return self


# ---------------------------------------------------------------------------- model
def load_model_and_processor(model_args: ModelArguments, training_args: FinedeficsTrainingConfig):
    """The model (wrapped with PEFT for LoRA/QLoRA) and its processor.

    ``model_name_or_path`` is a checkpoint of any family of ``modeling_finedefics.families.FAMILIES``. A
    Finedefics checkpoint loads through the locally registered classes; a stock checkpoint (such as
    ``HuggingFaceM4/idefics2-8b`` or ``Qwen/Qwen2.5-VL-7B-Instruct``) is loaded into its family's Finedefics
    classes with fresh alignment parameters and the tokenizer's EOS as summary token (``finedefics convert``
    does the same offline).
    """
    from .checkpoints import check_model_source, check_vocabulary
    from .trusted_code import drop_foreign_auto_map

    path = model_args.model_name_or_path
    remote = training_args.trust_remote_code
    check_model_source(path)
    config, family = model_config(path, remote)
    # Foreign auto_map entries would be saved into every checkpoint of the run and run for whoever loads it.
    drop_foreign_auto_map(config, f"{path}/config.json")
    processor = family.load_processor(path, remote)
    if config.model_type != family.model_type:
        logger.info("%s is a %s checkpoint: adding fresh Finedefics alignment parameters", path, config.model_type)
        config = family.finedefics_config(config, processor.tokenizer.eos_token_id)
    kwargs = {"config": config, "dtype": _dtype(model_args.torch_dtype)}
    if model_args.tuning == "qlora":
        kwargs["quantization_config"] = qlora_quantization_config(kwargs["dtype"])
    model = family.model.from_pretrained(path, **kwargs)
    check_vocabulary(model, processor.tokenizer, path)
    if _sharded_without_quantisation(model_args, training_args):
        _one_dtype_for_sharding(model)
    if model_args.tuning == "full":
        if model_args.freeze_vision_tower:
            vision_tower(model).requires_grad_(False)
        return model, processor
    return apply_lora(model, model_args, training_args), processor


def vision_tower(model):
    """The vision encoder of a Finedefics model of any family (under PEFT's wrapping too)."""
    model = model.get_base_model() if hasattr(model, "get_base_model") else model
    return model._vision_tower()


def lora_targets(model_args: ModelArguments, family) -> str:
    """The recipe's ``lora_target_modules``, else the family's default (``Family.lora_targets``)."""
    return model_args.lora_target_modules or family.lora_targets


def qlora_quantization_config(compute_dtype):
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype if compute_dtype not in (None, "auto") else torch.float32,
        llm_int8_skip_modules=NOT_QUANTISED,
    )


def apply_lora(model, model_args: ModelArguments, training_args: FinedeficsTrainingConfig,
               sharded: bool | None = None):
    """Wrap with LoRA; temperatures and projection heads train in full and are saved with the adapter.

    ``sharded``: whether a weight-sharding engine trains it (default: the launch's, ``engines.engine_of``)."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    from modeling_finedefics.families import family_of

    with _peft_checkpointing_deprecations():
        if model_args.tuning == "qlora":
            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=_checkpointing(training_args))
        modules_to_save = [name for name in MODULES_TO_SAVE if getattr(model, name, None) is not None]
        config = LoraConfig(
            r=model_args.lora_r, lora_alpha=model_args.lora_alpha, lora_dropout=model_args.lora_dropout,
            target_modules=lora_targets(model_args, family_of(model)), modules_to_save=modules_to_save,
            task_type="CAUSAL_LM",
        )
        # ZeRO-3 gathers parameters into buffers of one dtype (FSDP2 wants one dtype per sharded group): LoRA
        # weights upcast to float32 beside a bf16 base fail its first optimizer step. ZeRO-3's optimizer keeps
        # float32 master weights of every trainable parameter (FSDP2 upcasts the trainable ones under mixed
        # precision), so keeping them in the model's dtype loses no update.
        if sharded is None:
            sharded = _sharded_without_quantisation(model_args, training_args)
        model = get_peft_model(model, config, autocast_adapter_dtype=not sharded)
    return model


def _sharded_without_quantisation(model_args: ModelArguments, training_args) -> bool:
    """Whether the run's engine shards the weights (ZeRO-3, FSDP2) of an unquantised model."""
    from .engines import engine_of

    return model_args.tuning != "qlora" and engine_of(training_args).shards_weights


def _one_dtype_for_sharding(model) -> None:
    """The float32 alignment modules (temperatures, heads) in the model's dtype, for ZeRO-3's one-dtype buffers
    and FSDP2's one dtype per sharded group."""
    dtype = model.get_input_embeddings().weight.dtype
    for name in model._keep_in_fp32_modules_strict:
        module = getattr(model, name, None)
        if module is not None:
            module.to(dtype)


def merge_and_save(model, processor, output_dir: str | Path) -> Path:
    """Merge a LoRA adapter (if any) into the weights and save a complete, loadable checkpoint."""
    output_dir = Path(output_dir)
    if hasattr(model, "merge_and_unload"):
        if getattr(model, "is_loaded_in_4bit", False) or _is_quantised(model):
            model = dequantised_merge(model)
        else:
            model = model.merge_and_unload()
    model.save_pretrained(output_dir, safe_serialization=True)
    processor.save_pretrained(output_dir)
    clean_saved_auto_maps(output_dir)
    return output_dir


def dequantised_merge(peft_model):
    """QLoRA merge without 4-bit rounding: reload the base in full precision, apply the adapter, merge.

    Merging into the 4-bit weights and dequantising afterwards would bake nf4 rounding into the
    checkpoint; QLoRA's adapters were trained against the dequantised weights, so they are applied to
    a full-precision copy of the same base instead.
    """
    import tempfile

    compute_dtype = peft_model.get_base_model().config.dtype or torch.float32
    with tempfile.TemporaryDirectory() as adapter_dir:
        peft_model.save_pretrained(adapter_dir)
        return merge_saved_adapter(adapter_dir, compute_dtype)


def save_final_checkpoint(trainer, processor, final_dir: str | Path) -> Path:
    """The stage's merged checkpoint; every process calls this.

    One process merges in memory. With several, each may hold only a shard of the weights (DeepSpeed
    ZeRO-3 partitions them, FSDP2 shards them, and ``save_pretrained`` on the main process alone would write
    empty tensors), so they are gathered and saved (``Trainer.save_model``; FSDP's full state dict whatever
    the config's ``state_dict_type``): the adapter, or the full weights; the main process then merges a saved
    adapter into a freshly loaded base.
    """
    final_dir = Path(final_dir)
    if trainer.accelerator.num_processes == 1:
        return merge_and_save(trainer.model, processor, final_dir)
    is_adapter = hasattr(trainer.accelerator.unwrap_model(trainer.model), "merge_and_unload")
    saved = final_dir.with_name("gathered-adapter") if is_adapter else final_dir
    if trainer.is_fsdp_enabled:  # whole weights whatever the config's state_dict_type (sharded for checkpoints)
        state_dict = trainer.accelerator.get_state_dict(trainer.model)  # every process takes part
        if trainer.args.should_save:
            trainer._save(str(saved), state_dict=state_dict)
    else:
        trainer.save_model(str(saved))
    if is_adapter and trainer.is_world_process_zero():
        dtype = trainer.accelerator.unwrap_model(trainer.model).get_base_model().config.dtype
        with outside_zero3():  # one process loads a whole base: no partitioning, no collective
            merged = merge_saved_adapter(saved, dtype)
        merged.save_pretrained(final_dir, safe_serialization=True)
        processor.save_pretrained(final_dir)
        shutil.rmtree(saved)
    elif trainer.is_world_process_zero():
        processor.save_pretrained(final_dir)
    if trainer.is_world_process_zero():
        clean_saved_auto_maps(final_dir)
    trainer.accelerator.wait_for_everyone()
    return final_dir


def check_distributed_setup(model_args: ModelArguments, training_args) -> None:
    """Refuse, before any weight loads, what the launch's engine cannot honour (``engines.check_engine_setup``)."""
    from .engines import check_engine_setup

    check_engine_setup(model_args, training_args)


@contextlib.contextmanager
def outside_zero3():
    """Models built inside are whole (transformers' ZeRO-3 flag, which makes ``from_pretrained`` partition every
    weight over the processes as it loads, is off inside)."""
    from transformers.integrations import deepspeed as hf_deepspeed

    held = hf_deepspeed._hf_deepspeed_config_weak_ref
    hf_deepspeed._hf_deepspeed_config_weak_ref = None
    try:
        yield
    finally:
        hf_deepspeed._hf_deepspeed_config_weak_ref = held


def _checkpointing(training_args) -> bool:
    return bool(getattr(training_args, "activation_checkpointing", False)
                or getattr(training_args, "gradient_checkpointing", False))


def _is_quantised(model) -> bool:
    return any(type(module).__name__ in ("Linear4bit", "Linear8bitLt") for module in model.modules())


def _dtype(name: str):
    if name in ("auto", None):
        return "auto"
    return getattr(torch, name)


# ----------------------------------------------------------------------------- data
def load_training_dataset(data_args: DataArguments):
    """The training split with the Finedefics columns (image, category, attribute, negatives)."""
    if data_args.dataset_dir:
        dataset = _load_dataset_dir(Path(data_args.dataset_dir), data_args.train_split)
    else:
        from datasets import load_dataset

        dataset = load_dataset(data_args.dataset_name, split=data_args.train_split)
    if data_args.max_train_samples:
        dataset = dataset.select(range(min(data_args.max_train_samples, len(dataset))))
    if len(dataset) == 0:
        raise ValueError(f"{data_args.dataset_dir or data_args.dataset_name}: split {data_args.train_split!r} has no "
                         "rows to train on")
    if "example_id" not in dataset.column_names:
        dataset = dataset.add_column("example_id", list(range(len(dataset))))
    return _undecoded_images(dataset)


def _undecoded_images(dataset):
    """Leave images undecoded: the collator opens them, so a corrupt or truncated file stops training with an
    error naming it and its row rather than a traceback from inside the data loader."""
    import datasets

    feature = getattr(dataset, "features", None) or {}
    if isinstance(feature.get("image"), datasets.Image) and feature["image"].decode:
        return dataset.cast_column("image", datasets.Image(decode=False))
    return dataset


def _load_dataset_dir(folder: Path, split: str):
    """A `finedefics data` benchmark folder, a `save_to_disk` folder, or an imagefolder with metadata."""
    import datasets

    if not folder.is_dir():
        raise FileNotFoundError(f"dataset_dir {folder} does not exist; build it with `finedefics data` first")
    if (folder / "categories.json").is_file():
        from finedefics_data.synth import load_synthetic_dataset

        splits = load_synthetic_dataset(folder)
    elif (folder / "dataset_dict.json").is_file() or (folder / "dataset_info.json").is_file():
        _refuse_empty_saved_split(folder, split)
        splits = datasets.load_from_disk(str(folder))
    else:
        splits = datasets.load_dataset("imagefolder", data_dir=str(folder))
    if isinstance(splits, datasets.Dataset):
        return splits
    if split not in splits:
        raise ValueError(f"{folder} has no split {split!r} (has {sorted(splits)})")
    return splits[split]


def _refuse_empty_saved_split(folder: Path, split: str) -> None:
    """``save_to_disk`` writes a 0-row split with no data file, which ``load_from_disk`` fails on with an
    IndexError."""
    state_file = folder / split / "state.json" if (folder / "dataset_dict.json").is_file() else folder / "state.json"
    try:
        data_files = json.loads(state_file.read_text(encoding="utf-8"))["_data_files"]
    except (OSError, ValueError, KeyError, TypeError):
        return  # not the layout this check knows; load_from_disk reports what it finds
    if data_files == []:
        raise ValueError(f"{folder}: split {split!r} has no rows to train on")


# ----------------------------------------------------------------------------- runs
def run_stage(model_args: ModelArguments, data_args: DataArguments, training_args: FinedeficsTrainingConfig,
              callbacks=None, progress=None) -> Path:
    """Train one stage and write its merged checkpoint to ``training_args.output_dir/final``.

    The stage's data are ``data_args.for_stage(stage)``; without ``object_noun`` in the recipe, the
    data's noun (see ``data_noun``) is used, else the starting checkpoint's. ``progress`` (an object
    with a ``callback()`` returning a ``TrainerCallback``) replaces Trainer's own progress bar and
    printed logs, for callers such as the demo that show one bar per phase.
    """
    from .checkpoints import check_output_dir, output_dir_lock

    check_output_dir(training_args.output_dir)
    with output_dir_lock(training_args.output_dir):
        return _run_stage(model_args, data_args, training_args, callbacks, progress)


def _run_stage(model_args: ModelArguments, data_args: DataArguments, training_args: FinedeficsTrainingConfig,
               callbacks=None, progress=None) -> Path:
    from .checkpoints import last_complete_checkpoint
    from .trainer import FinedeficsTrainer

    data_args = data_args.for_stage(training_args.stage)
    training_args = with_data_noun(training_args, data_args)
    check_distributed_setup(model_args, training_args)
    model, processor = load_model_and_processor(model_args, training_args)
    dataset = load_training_dataset(data_args)
    trainer = FinedeficsTrainer(model=model, args=training_args, train_dataset=dataset,
                                processing_class=processor, callbacks=callbacks)
    if progress is not None:
        replace_progress_display(trainer, progress.callback())
    logger.info("stage %d: %d training examples, %s tuning, world size %d", training_args.stage, len(dataset),
                model_args.tuning, trainer.accelerator.num_processes)
    resume = training_args.resume_from_checkpoint
    if resume is None:
        resume = last_complete_checkpoint(training_args.output_dir)  # pick up an interrupted run
    if resume:
        logger.info("resuming stage %d from %s", training_args.stage, resume)
    with named_resume_state_errors(resume), named_save_errors(training_args.output_dir):
        trainer.train(resume_from_checkpoint=resume)
    check_finite_trained_weights(trainer, f"stage {training_args.stage} after step {trainer.state.global_step} "
                                          f"(output_dir {training_args.output_dir}, final/ not written)")
    final_dir = Path(training_args.output_dir) / "final"
    with named_save_errors(final_dir):
        save_final_checkpoint(trainer, processor, final_dir)
    if trainer.is_world_process_zero():
        history = Path(training_args.output_dir) / "log_history.json"
        history.write_text(json.dumps(trainer.state.log_history, indent=1))
        logger.info("stage %d checkpoint: %s", training_args.stage, final_dir)
    trainer.accelerator.wait_for_everyone()
    return final_dir


def check_finite_trained_weights(trainer, source: str) -> None:
    """``check_finite_weights`` on every process's part of the weights (a ZeRO-3 or FSDP2 shard), all stopping
    together when any part holds NaN or inf (a process that went on to save alone would wait forever)."""
    from finedefics_eval.loading import non_finite_parameters

    bad = non_finite_parameters(trainer.model)
    if trainer.accelerator.num_processes > 1:
        count = torch.tensor([float(len(bad))], device=trainer.accelerator.device)
        if trainer.accelerator.reduce(count, reduction="sum").item() and not bad:
            bad = ["a part held by another process"]
    if bad:
        raise ValueError(f"{source}: the weights hold NaN or inf values (in {', '.join(bad)}); the checkpoint is "
                         "broken (a diverged training run?), its scores would mean nothing")


# Write failures that are the machine's state, not a bug: reported as one line naming the folder.
SAVE_ERRNOS = {errno.ENOSPC, errno.EACCES, errno.EPERM, errno.EROFS, errno.EDQUOT, errno.EFBIG}


@contextlib.contextmanager
def named_save_errors(folder: str | Path):
    """A full disk, a read-only or forbidden folder while checkpoints are written, as one line naming the folder.

    torch reports a failed checkpoint write as ``RuntimeError: [enforce fail at inline_container.cc...]`` and
    safetensors as a bare OSError; a rerun after freeing space resumes from the newest complete checkpoint.
    """
    try:
        yield
    except OSError as error:
        if error.errno not in SAVE_ERRNOS:
            raise
        raise ValueError(f"cannot write in {folder}: {error.strerror or error}; free space or fix the folder's "
                         "permissions, then rerun (it resumes from the newest complete checkpoint)") from None
    except RuntimeError as error:
        if "inline_container" not in str(error) and "file write failed" not in str(error):
            raise
        raise ValueError(f"cannot write in {folder}: a checkpoint file could not be written (no space left on "
                         "device?); free space, then rerun (it resumes from the newest complete checkpoint)") from None


# Trainer's pickled state files in a checkpoint folder, in the order a resume reads them.
RESUME_STATE_FILES = ("optimizer.pt", "scheduler.pt", "scaler.pt", "rng_state.pth", "rng_state_*.pth")


@contextlib.contextmanager
def named_resume_state_errors(resume: str | None):
    """A state file of ``resume`` that cannot be unpickled (tampered, or cut short) as one line naming it.

    torch's ``weights_only`` loader refuses anything but tensors and plain data, so no code runs; its
    ``UnpicklingError`` names no file, and the user needs to know which checkpoint to delete.
    """
    import pickle

    try:
        yield
    except (pickle.UnpicklingError, EOFError) as error:
        if not resume:
            raise
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise ValueError(f"cannot resume: {unreadable_state_file(Path(resume))} cannot be unpickled safely "
                         f"({reason}); delete {resume} to resume from an earlier checkpoint") from None


def unreadable_state_file(checkpoint: Path) -> Path | str:
    """The first of ``checkpoint``'s state files that torch's safe loader refuses (else the folder's name)."""
    for pattern in RESUME_STATE_FILES:
        for path in sorted(checkpoint.glob(pattern)):
            try:
                torch.load(path, map_location="cpu", weights_only=True)
            except Exception:  # whatever the loader raises, this is the file it could not read
                return path
    return f"a state file of {checkpoint}"


def with_data_noun(training_args: FinedeficsTrainingConfig, data_args: DataArguments) -> FinedeficsTrainingConfig:
    """``training_args`` with the data's noun when the recipe sets none (the recipe's wins)."""
    from finedefics_data.schema import data_noun

    noun = data_noun(data_args.dataset_dir) if data_args.dataset_dir and not training_args.object_noun else None
    if noun is None:
        return training_args
    logger.info("objects are called %r (from %s)", str(noun), data_args.dataset_dir)
    return replace(training_args, object_noun=noun.singular, object_noun_plural=noun.plural,
                   object_category_word=training_args.object_category_word or noun.category_word)


def replace_progress_display(trainer, callback) -> None:
    """Swap Trainer's progress bar / log printer for ``callback``."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer.remove_callback(ProgressCallback)
    trainer.remove_callback(PrinterCallback)
    trainer.add_callback(callback)


def run_two_stage(model_args: ModelArguments, data_args: DataArguments, training_args: FinedeficsTrainingConfig,
                  stage2_overrides: dict | None = None) -> tuple[Path, Path]:
    """Stage I, merge, stage II (from the merged stage I checkpoint): the paper's recipe in one call.

    Both stages' data are checked and summarised before stage I starts, so a stage II problem (no
    recognition question, rows it cannot train) shows up before hours of stage I.
    """
    from .checkpoints import check_output_dir
    from .trainer import describe_stage_data

    check_output_dir(training_args.output_dir)
    root = Path(training_args.output_dir)
    for stage in (1, 2):
        describe_stage_data(load_training_dataset(data_args.for_stage(stage)), stage,
                            needs_descriptions=training_args.needs_descriptions)
    stage1_args = replace(training_args, stage=1, output_dir=str(root / "stage1"))
    stage1_dir = run_stage(model_args, data_args, stage1_args)
    stage2_args = replace(training_args, stage=2, output_dir=str(root / "stage2"), **(stage2_overrides or {}))
    stage2_model_args = replace(model_args, model_name_or_path=str(stage1_dir))
    stage2_dir = run_stage(stage2_model_args, data_args, stage2_args)
    return stage1_dir, stage2_dir
