"""Adding a model family touches one file: a throwaway family, whose classes subclass LLaVA's and which is
registered from this test file only, goes through the generic paths (the registry and the Auto classes, the CLI's
family choice, `finedefics init-model`, training's loading and LoRA targets, a stage I trainer step, the dry run,
the converter's code files and evaluation's family questions). Nothing outside this file names it."""

import dataclasses
import json
import re

import pytest
import torch
from conftest import TOY_CATEGORIES, TOY_COLOURS, toy_rows
from datasets import Dataset, DatasetDict

from modeling_finedefics.families import FAMILIES, family_for_model_type, family_of, register_family, unregister_family
from modeling_finedefics.llava import (
    FinedeficsLlavaConfig,
    FinedeficsLlavaForConditionalGeneration,
    FinedeficsLlavaProcessor,
)

NAME = "throwaway_llava"
CORPUS = TOY_CATEGORIES + [f"a small bird with {colour} feathers" for colour in TOY_COLOURS]


class ThrowawayConfig(FinedeficsLlavaConfig):
    model_type = "finedefics_throwaway_llava"


class ThrowawayForConditionalGeneration(FinedeficsLlavaForConditionalGeneration):
    config_class = ThrowawayConfig


class ThrowawayProcessor(FinedeficsLlavaProcessor):
    pass


@pytest.fixture(scope="module")
def family():
    """The throwaway family: LLaVA's family with its own classes and name, built by LLaVA's tiny builder."""
    llava = FAMILIES["llava"]
    throwaway = dataclasses.replace(llava, name=NAME, config=ThrowawayConfig,
                                    model=ThrowawayForConditionalGeneration, processor=ThrowawayProcessor,
                                    shipped_configs={}, tiny_layout="llava")
    register_family(throwaway)
    yield throwaway
    unregister_family(NAME)


@pytest.fixture(scope="module")
def checkpoint(family, tmp_path_factory):
    """`finedefics init-model --family throwaway_llava` on a small training split."""
    from finedefics_cli import main

    data = tmp_path_factory.mktemp("data") / "toy"
    DatasetDict({"train": Dataset.from_list(toy_rows())}).save_to_disk(str(data))
    output = tmp_path_factory.mktemp("init") / "model"
    assert main(["init-model", "--family", NAME, "--corpus", str(data), "--noun", "bird", str(output)]) == 0
    return output, data


def test_the_registry_knows_the_new_family(family):
    assert FAMILIES[NAME] is family and family_for_model_type(ThrowawayConfig.model_type) is family
    assert family_for_model_type("llava") is FAMILIES["llava"]  # a stock type names the family registered first
    model, processor = family.build_tiny(CORPUS)
    assert type(model) is ThrowawayForConditionalGeneration and type(processor) is ThrowawayProcessor
    assert family_of(model) is family


def test_init_model_writes_a_checkpoint_that_loads_through_the_auto_classes(checkpoint, family):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    output, _ = checkpoint
    assert json.loads((output / "config.json").read_text())["model_type"] == ThrowawayConfig.model_type
    assert type(AutoModelForImageTextToText.from_pretrained(output)) is ThrowawayForConditionalGeneration
    assert type(AutoProcessor.from_pretrained(output)) is ThrowawayProcessor


def test_training_loads_it_with_the_family_lora_targets_and_takes_a_stage_one_step(checkpoint, family, tmp_path):
    from finedefics_training.config import FinedeficsTrainingConfig
    from finedefics_training.recipe import (
        DataArguments,
        ModelArguments,
        load_model_and_processor,
        load_training_dataset,
    )
    from finedefics_training.trainer import FinedeficsTrainer

    output, data = checkpoint
    args = FinedeficsTrainingConfig(output_dir=str(tmp_path / "run"), use_cpu=True, report_to=[], stage=1,
                                    max_steps=1, per_device_train_batch_size=4, save_strategy="no")
    model, processor = load_model_and_processor(ModelArguments(model_name_or_path=str(output)), args)
    assert family_of(model) is family
    lora = {name.removeprefix("base_model.model.").rsplit(".lora_A", 1)[0]
            for name, _ in model.named_modules() if name.endswith(".lora_A")}
    assert lora and all(re.fullmatch(family.lora_targets, name) for name in lora)
    trainer = FinedeficsTrainer(model=model, args=args, processing_class=processor,
                                train_dataset=load_training_dataset(DataArguments(dataset_dir=str(data))))
    trainer.train()
    logged = trainer.state.log_history[-1]
    assert torch.isfinite(torch.tensor(logged["train_loss"]))


def test_the_dry_run_plans_it(checkpoint, family, tmp_path):
    from finedefics_training.config import FinedeficsTrainingConfig
    from finedefics_training.dry_run import plan_stage
    from finedefics_training.recipe import ModelArguments

    output, _ = checkpoint
    plan = plan_stage(ModelArguments(model_name_or_path=str(output), tuning="lora", torch_dtype="float32"),
                      FinedeficsTrainingConfig(output_dir=str(tmp_path / "run"), use_cpu=True, report_to=[],
                                               stage=1, per_device_train_batch_size=2))
    assert plan.parameters["decoder"][1] > 0 and plan.shape.image_tokens > 0
    assert plan.assumptions[0].startswith(f"{NAME}: ")


def test_converter_and_evaluation_ask_the_family(family):
    from finedefics_eval.loading import supported_model_types
    from finedefics_eval.scoring import SharedBatch, prefill_positions
    from finedefics_training.convert import model_code_files

    assert model_code_files(family) == model_code_files(FAMILIES["llava"])
    assert ThrowawayConfig.model_type in supported_model_types()
    model, processor = family.build_tiny(CORPUS)
    assert not SharedBatch(model, processor, images=None).shares_image_features
    assert "position_ids" in prefill_positions(model, torch.ones(1, 3, dtype=torch.long))
