"""Training end to end on CPU: both stages, LoRA / QLoRA / full, merge, two processes (resuming: test_resume.py)."""

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

from finedefics_cli import main

REPO_ROOT = Path(__file__).resolve().parents[1]

LOAD_AND_DESCRIBE = textwrap.dedent(
    """
    import sys, torch
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor
    folder = sys.argv[1]
    model = AutoModelForImageTextToText.from_pretrained(folder, trust_remote_code=True)
    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    assert type(model).__module__.startswith("transformers_modules."), type(model).__module__
    result = model.classify([Image.new("RGB", (64, 64), "red")], ["Corvel Tit", "Mirel Finch"], processor)
    print(type(model).__name__, result.labels[0][0])
    """
)


def _recipe(tmp_path, name, **fields):
    defaults = dict(tuning="full", per_device_train_batch_size=8, learning_rate=2e-3, logging_steps=1,
                    save_strategy="no", report_to="none", use_cpu=True, seed=0, num_negatives=2,
                    dataloader_num_workers=0, disable_tqdm=True)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({**defaults, **fields}))
    return path


def _history(output_dir):
    state = sorted(Path(output_dir).glob("checkpoint-*/trainer_state.json"))
    return json.loads(state[-1].read_text())["log_history"] if state else None


def _loads_in_fresh_process(folder):
    result = subprocess.run([sys.executable, "-c", LOAD_AND_DESCRIBE, str(folder)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split()[0] == "FinedeficsForConditionalGeneration"


def _run_stage_in_process(recipe_path, **overrides):
    from finedefics_cli.commands.train import parse_recipe
    from finedefics_training.recipe import load_model_and_processor, load_training_dataset
    from finedefics_training.trainer import FinedeficsTrainer

    argv = ["--config", str(recipe_path)] + [item for key, value in overrides.items()
                                             for item in (f"--{key}", str(value))]
    _, (model_args, data_args, training_args) = parse_recipe(argv)
    model, processor = load_model_and_processor(model_args, training_args)
    trainer = FinedeficsTrainer(model=model, args=training_args, train_dataset=load_training_dataset(data_args),
                                processing_class=processor)
    trainer.train()
    return trainer


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _first_and_last(history, key):
    values = [entry[key] for entry in history if key in entry]
    return sum(values[:3]) / 3, sum(values[-3:]) / 3


@pytest.fixture
def synthetic_benchmark(tmp_path):
    """A small synthetic benchmark and a micro model whose tokenizer was trained on its texts."""
    from finedefics_data.synth import SynthConfig, generate_benchmark, text_corpus
    from modeling_finedefics.tiny import build_tiny_model, build_tiny_processor, build_tiny_tokenizer

    data_dir = generate_benchmark(tmp_path / "synth", SynthConfig(num_genera=2, species_per_genus=3,
                                  train_per_category=8, rare_train_per_category=3, test_per_category=2),
                                  progress=False)
    processor = build_tiny_processor(build_tiny_tokenizer(text_corpus(data_dir)))
    model_dir = tmp_path / "micro-synth"
    build_tiny_model(processor, preset="micro").save_pretrained(model_dir)
    processor.save_pretrained(model_dir)
    return data_dir, model_dir


def test_tiny_recipe_stage_one_then_stage_two_losses_fall(tmp_path, synthetic_benchmark):
    """The shipped tiny CPU recipe, full fine-tuning, on the synthetic data: every loss term falls."""
    data_dir, model_dir = synthetic_benchmark
    recipe = REPO_ROOT / "training" / "recipes" / "tiny-cpu-stage1.yaml"
    overrides = dict(model_name_or_path=model_dir, dataset_dir=data_dir, output_dir=tmp_path / "stage1",
                     max_steps=30, per_device_train_batch_size=8, learning_rate=2e-3, logging_steps=1,
                     save_strategy="no", disable_tqdm=True)
    stage1 = _run_stage_in_process(recipe, **overrides)
    history = stage1.state.log_history
    for key in ("loss", "lm_loss", "loss_object_attribute", "loss_attribute_category", "loss_category_category"):
        first, last = _first_and_last(history, key)
        assert last < first, f"{key} did not fall: {first:.4f} -> {last:.4f}"
    temperatures = [entry["temperature_object_attribute"] for entry in history
                    if "temperature_object_attribute" in entry]
    assert temperatures[-1] != temperatures[0]  # the temperature is learned, not frozen
    assert all(entry.get("skipped_object_attribute", 0) == 0 for entry in history)

    stage1_dir = tmp_path / "stage1-final"
    stage1.save_model(str(stage1_dir))
    stage1.processing_class.save_pretrained(stage1_dir)
    stage2_recipe = REPO_ROOT / "training" / "recipes" / "tiny-cpu-stage2.yaml"
    stage2 = _run_stage_in_process(stage2_recipe, **{**overrides, "model_name_or_path": stage1_dir,
                                                     "output_dir": tmp_path / "stage2"})
    first, last = _first_and_last(stage2.state.log_history, "loss")
    assert last < first
    assert not any("loss_object_attribute" in entry for entry in stage2.state.log_history)


@pytest.mark.parametrize("tuning", ["lora", "full"])
def test_two_stage_command_writes_loadable_checkpoints(tmp_path, micro_checkpoint, toy_dataset_dir, tuning, capsys):
    recipe = _recipe(tmp_path, "two-stage", model_name_or_path=str(micro_checkpoint), dataset_dir=str(toy_dataset_dir),
                     output_dir=str(tmp_path / "run"), tuning=tuning, max_steps=3, stage2_max_steps=2)
    assert main(["two-stage", "--config", str(recipe)]) == 0
    for stage in ("stage1", "stage2"):
        final = tmp_path / "run" / stage / "final"
        assert (final / "model.safetensors").is_file() and not (final / "adapter_config.json").exists()
        keys = load_file(final / "model.safetensors").keys()
        assert not any("lora_" in key or "modules_to_save" in key for key in keys)  # merged
        _loads_in_fresh_process(final)


def test_lora_adapter_round_trip_keeps_trained_temperatures(tmp_path, micro_checkpoint, toy_dataset_dir):
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText

    recipe = _recipe(tmp_path, "lora", model_name_or_path=str(micro_checkpoint), dataset_dir=str(toy_dataset_dir),
                     output_dir=str(tmp_path / "lora"), tuning="lora", stage=1, max_steps=6, learning_rate=5e-2)
    trainer = _run_stage_in_process(recipe)
    trained = {k: v.item() for k, v in trainer.model.get_base_model().get_logit_scales().items()}
    assert trained["object_attribute"] != pytest.approx(1 / 0.07, rel=1e-4)
    adapter_dir = tmp_path / "adapter"
    trainer.model.save_pretrained(adapter_dir)
    base = AutoModelForImageTextToText.from_pretrained(micro_checkpoint, trust_remote_code=True)
    assert base.get_logit_scales()["object_attribute"].item() == pytest.approx(1 / 0.07, rel=1e-5)
    reloaded = PeftModel.from_pretrained(base, adapter_dir)
    scales = reloaded.get_base_model().get_logit_scales()
    for name, value in trained.items():
        assert scales[name].item() == pytest.approx(value, rel=1e-6)


def test_qlora_trains_a_few_steps_on_cpu_and_merges(tmp_path, micro_checkpoint, toy_dataset_dir):
    pytest.importorskip("bitsandbytes")
    recipe = _recipe(tmp_path, "qlora", model_name_or_path=str(micro_checkpoint), dataset_dir=str(toy_dataset_dir),
                     output_dir=str(tmp_path / "qlora"), tuning="qlora", stage=1, max_steps=3, torch_dtype="float32")
    assert main(["train", "--config", str(recipe)]) == 0
    final = tmp_path / "qlora" / "final"
    keys = load_file(final / "model.safetensors")
    assert not any("lora_" in key or "absmax" in key or "quant" in key for key in keys)
    assert "temperatures.object_attribute" in keys
    config = json.loads((final / "config.json").read_text())
    assert "quantization_config" not in config
    _loads_in_fresh_process(final)


def test_two_processes_through_torchrun(tmp_path, micro_checkpoint, toy_dataset_dir):
    recipe = _recipe(tmp_path, "ddp", model_name_or_path=str(micro_checkpoint), dataset_dir=str(toy_dataset_dir),
                     output_dir=str(tmp_path / "ddp"), stage=1, max_steps=3, per_device_train_batch_size=4)
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
               f"--master_port={_free_port()}",
               "-m", "finedefics_cli", "train", "--config", str(recipe)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    assert (tmp_path / "ddp" / "final" / "model.safetensors").is_file()
    assert "world size 2" in result.stderr


def test_recipe_with_an_unknown_key_is_a_clear_error(tmp_path, capsys):
    recipe = _recipe(tmp_path, "bad", model_name_or_path="x", dataset_dir="y", output_dir=str(tmp_path / "o"),
                     contrastive_wieght=0.5)
    assert main(["train", "--config", str(recipe)]) == 2
    assert "contrastive_wieght" in capsys.readouterr().err


def test_stage_one_without_contrastive_columns_fails_before_training(tmp_path, micro_checkpoint, capsys):
    from datasets import Dataset, DatasetDict
    from PIL import Image

    folder = tmp_path / "plain"
    rows = [{"image": Image.new("RGB", (64, 64)), "category": "Corvel Tit"} for _ in range(4)]
    DatasetDict({"train": Dataset.from_list(rows)}).save_to_disk(str(folder))
    recipe = _recipe(tmp_path, "plain", model_name_or_path=str(micro_checkpoint), dataset_dir=str(folder),
                     output_dir=str(tmp_path / "o"), stage=1, max_steps=2)
    assert main(["train", "--config", str(recipe)]) == 2
    assert "lacks column(s) ['attribute', 'neg_categories', 'neg_attributes']" in capsys.readouterr().err
    assert not (tmp_path / "o" / "final").exists()


def test_stage2_overrides_are_typed_like_their_fields_from_recipe_and_command_line(tmp_path):
    """`stage2_*` keys reach stage II with the type of the field they override; anything else is refused."""
    import yaml

    from finedefics_cli.commands.two_stage import recipe_parser, stage2_overrides

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"model_name_or_path": "m", "dataset_dir": "d", "use_cpu": True,
                                      "stage2_learning_rate": 2.0e-5, "stage2_bf16": True, "stage2_report_to": None}))
    *_, remaining = recipe_parser().parse_args_and_config(
        ["--config", str(recipe), "--stage2_max_steps=7", "--stage2_lr_scheduler_type", "constant"],
        return_remaining_strings=True)
    overrides = stage2_overrides(remaining)
    assert overrides == {"learning_rate": 2e-5, "bf16": True, "report_to": None, "max_steps": 7,
                         "lr_scheduler_type": "constant"}
    assert isinstance(overrides["max_steps"], int) and isinstance(overrides["learning_rate"], float)
    for bad in (["--stage2_no_such_field", "1"], ["--stage2_model_name_or_path", "x"], ["--max_stepz", "3"],
                ["--stage2_max_steps"]):
        with pytest.raises(ValueError, match="unknown argument|needs a value"):
            stage2_overrides(bad)
