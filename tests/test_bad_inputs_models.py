"""Bad models, checkpoints, recipes and command lines: each is refused with an error that names what is wrong."""

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from conftest import toy_rows
from PIL import Image

from finedefics_cli import main


def _image_inputs(processor, colours=("red", "blue")):
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Which bird is it?"}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    images = [[Image.new("RGB", (64, 64), colour)] for colour in colours]
    return processor(images=images, text=[prompt] * len(colours), return_tensors="pt", padding=True)


# ----------------------------------------------------------------- pixel values
@pytest.mark.parametrize("bad_value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_pixel_values_are_refused_naming_the_batch_row(micro_model, tiny_processor, bad_value):
    inputs = _image_inputs(tiny_processor)
    inputs["pixel_values"][1, 0, 2, 5, 7] = bad_value
    pattern = r"pixel_values hold NaN or inf values in batch row\(s\) \[1\]"
    with torch.no_grad():
        with pytest.raises(ValueError, match=pattern):
            micro_model(**inputs)
        with pytest.raises(ValueError, match=pattern):
            micro_model.get_image_embeddings(inputs["pixel_values"], inputs["pixel_attention_mask"])
        with pytest.raises(ValueError, match=pattern):
            micro_model.generate(**inputs, max_new_tokens=2, do_sample=False)


def test_finite_pixel_values_still_give_finite_embeddings(micro_model, tiny_processor):
    inputs = _image_inputs(tiny_processor)
    with torch.no_grad():
        embeds = micro_model.get_image_embeddings(inputs["pixel_values"], inputs["pixel_attention_mask"])
        loss = micro_model(**inputs, labels=inputs["input_ids"]).loss
    assert torch.isfinite(embeds).all() and torch.isfinite(loss)


def test_channels_last_4d_pixel_values_name_the_expected_shape(micro_model, tiny_processor):
    pixel_values = _image_inputs(tiny_processor)["pixel_values"][:, 0]  # (2, 3, 64, 64)
    with pytest.raises(ValueError, match=r"pixel_values must be \(batch, n_images, 3, height, width\) or "
                                         r"\(batch, 3, height, width\), got shape \(2, 64, 64, 3\)"):
        micro_model.get_image_embeddings(pixel_values.permute(0, 2, 3, 1))


def test_pixel_attention_mask_of_another_shape_names_both_shapes(micro_model, tiny_processor):
    inputs = _image_inputs(tiny_processor)
    with pytest.raises(ValueError, match=r"pixel_attention_mask has shape \(2, 64, 64\), expected \(2, 1, 64, 64\)"):
        micro_model.get_image_embeddings(inputs["pixel_values"], inputs["pixel_attention_mask"][:, 0])


# ------------------------------------------------------------ commands and files
def _recipe(tmp_path, **fields):
    recipe = dict(tuning="full", per_device_train_batch_size=8, max_steps=1, save_strategy="no", report_to="none",
                  use_cpu=True, dataloader_num_workers=0, disable_tqdm=True, num_negatives=2, **fields)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return str(path)


def _command(name, tmp_path, model, data, output=None):
    """argv of ``finedefics <name>`` reading ``model`` (and ``data``) and writing to ``output``."""
    output = str(output or tmp_path / f"{name}-output")
    if name in ("train", "two-stage"):
        return [name, "--config", _recipe(tmp_path, model_name_or_path=str(model), dataset_dir=str(data),
                                             output_dir=output)]
    if name == "push":
        return ["push", str(model), "--repo-id", "someone/finedefics", "--stage-only", output]
    if name == "demo":
        return ["demo", "--quick", "--output-dir", output]
    if name == "eval":
        return ["eval", "--model", str(model), "--benchmark", str(data), "--split", "train", "--limit", "2",
                "--no-plots", "--no-progress", "--bootstrap-samples", "10", "--output-dir", output]
    return ["convert", str(model), output]


def _fails(argv, capsys) -> str:
    """Runs the CLI, checks it refused the input (exit 2, no traceback) and returns its error line."""
    assert main(argv) == 2
    error = capsys.readouterr().err
    assert f"finedefics {argv[0]}: error:" in error and "Traceback" not in error
    return error


def _copy(checkpoint: Path, tmp_path: Path, name: str) -> Path:
    copy = tmp_path / name
    shutil.copytree(checkpoint, copy)
    return copy


@pytest.mark.parametrize("command", ["train", "eval", "convert", "push"])
def test_truncated_weights_name_the_file(command, tmp_path, micro_checkpoint, toy_dataset_dir, capsys):
    checkpoint = _copy(micro_checkpoint, tmp_path, "cut")
    weights = checkpoint / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    error = _fails(_command(command, tmp_path, checkpoint, toy_dataset_dir), capsys)
    assert f"{weights} is not a readable safetensors file (cut short or corrupt" in error


@pytest.mark.parametrize("command", ["train", "eval", "convert"])
def test_config_that_is_not_json_names_the_file(command, tmp_path, micro_checkpoint, toy_dataset_dir, capsys):
    checkpoint = _copy(micro_checkpoint, tmp_path, "bad-config")
    (checkpoint / "config.json").write_text('{"model_type": "finedefics",')
    error = _fails(_command(command, tmp_path, checkpoint, toy_dataset_dir), capsys)
    assert f"{checkpoint / 'config.json'} is not valid JSON" in error


@pytest.mark.parametrize("command", ["train", "two-stage", "eval", "convert", "demo"])
def test_output_dir_that_is_a_file_is_refused(command, tmp_path, micro_checkpoint, toy_dataset_dir, capsys):
    a_file = tmp_path / "results.txt"
    a_file.write_text("not a folder")
    error = _fails(_command(command, tmp_path, micro_checkpoint, toy_dataset_dir, output=a_file), capsys)
    assert f"{a_file} is a file, not a folder" in error
    assert a_file.read_text() == "not a folder"


def test_output_dir_below_a_file_is_refused(tmp_path, micro_checkpoint, toy_dataset_dir, capsys):
    a_file = tmp_path / "results.txt"
    a_file.write_text("not a folder")
    error = _fails(_command("train", tmp_path, micro_checkpoint, toy_dataset_dir, output=a_file / "run"), capsys)
    assert f"{a_file} is a file, not a folder" in error


def test_dataset_with_no_rows_is_refused_before_training(tmp_path, micro_checkpoint, capsys):
    from datasets import Dataset, DatasetDict

    empty = tmp_path / "empty-data"
    DatasetDict({"train": Dataset.from_list(toy_rows(4)).select([])}).save_to_disk(str(empty))
    error = _fails(_command("train", tmp_path, micro_checkpoint, empty), capsys)
    assert f"{empty}: split 'train' has no rows to train on" in error


def test_any_training_source_with_no_rows_is_refused(tmp_path, monkeypatch):
    """Whatever the loader (benchmark folder, imagefolder, Hub dataset), 0 rows is an error naming the source."""
    from datasets import Dataset

    from finedefics_training import recipe

    monkeypatch.setattr(recipe, "_load_dataset_dir", lambda folder, split: Dataset.from_list(toy_rows(2)).select([]))
    with pytest.raises(ValueError, match=f"{re.escape(str(tmp_path))}: split 'train' has no rows to train on"):
        recipe.load_training_dataset(recipe.DataArguments(dataset_dir=str(tmp_path)))


@pytest.fixture
def small_vocabulary_checkpoint(tmp_path, micro_checkpoint):
    """The micro checkpoint with its embedding matrix cut to 100 rows; its tokenizer keeps every token."""
    from modeling_finedefics import FinedeficsForConditionalGeneration

    model = FinedeficsForConditionalGeneration.from_pretrained(micro_checkpoint)
    model.resize_token_embeddings(100)
    folder = _copy(micro_checkpoint, tmp_path, "small-vocabulary")
    model.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("command", ["train", "eval"])
def test_tokenizer_larger_than_the_vocabulary_names_both_sizes(command, tmp_path, small_vocabulary_checkpoint,
                                                               toy_dataset_dir, capsys):
    from transformers import AutoTokenizer

    tokens = len(AutoTokenizer.from_pretrained(small_vocabulary_checkpoint))
    assert tokens > 100
    error = _fails(_command(command, tmp_path, small_vocabulary_checkpoint, toy_dataset_dir), capsys)
    assert (f"{small_vocabulary_checkpoint}: the tokenizer has {tokens} tokens but the model's embedding matrix "
            "has 100 rows") in error


@pytest.mark.parametrize("command", ["train", "eval", "convert"])
@pytest.mark.parametrize("missing", ["ck/nope", "./nope", "nope"])
def test_missing_model_folder_is_named_not_looked_up_on_the_hub(command, missing, tmp_path, toy_dataset_dir,
                                                               monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ck").mkdir()
    error = _fails(_command(command, tmp_path, missing, toy_dataset_dir), capsys)  # the tests run offline
    assert f"model folder {missing} does not exist" in error
    assert "huggingface.co" not in error


@pytest.mark.parametrize("missing", ["ck/nope", "../ck/nope", "runs/a/b"])
def test_missing_local_looking_model_folder_is_named_when_online_too(missing, tmp_path, monkeypatch):
    import huggingface_hub.constants

    from finedefics_training.checkpoints import check_model_source

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ck").mkdir()
    with pytest.raises(FileNotFoundError, match=f"model folder {re.escape(missing)} does not exist"):
        check_model_source(missing)
    check_model_source("HuggingFaceM4/idefics2-8b")  # a Hub id is left to the Hub


@pytest.mark.parametrize("command", ["train", "eval"])
def test_checkpoint_of_another_architecture_is_refused_at_load(command, tmp_path, micro_checkpoint, toy_dataset_dir,
                                                              capsys):
    # PaliGemma is an image-text-to-text model of no Finedefics family.
    checkpoint = _copy(micro_checkpoint, tmp_path, "paligemma")
    config = json.loads((checkpoint / "config.json").read_text())
    (checkpoint / "config.json").write_text(json.dumps({**config, "model_type": "paligemma"}))
    error = _fails(_command(command, tmp_path, checkpoint, toy_dataset_dir), capsys)
    assert f"{checkpoint / 'config.json'}: model_type is 'paligemma'; supported: 'finedefics', 'idefics2'" in error
    assert all(f"'{model_type}'" in error for model_type in ("finedefics_qwen2_5_vl", "qwen2_5_vl", "llava"))


def test_unknown_benchmark_name_lists_the_known_ones(tmp_path, micro_checkpoint, capsys):
    error = _fails(["eval", "--model", str(micro_checkpoint), "--benchmark", "bird-201",
                    "--output-dir", str(tmp_path / "eval")], capsys)
    assert "unknown benchmark 'bird-201'" in error and "did you mean 'bird-200'?" in error
    assert all(name in error for name in ("aircraft-102", "bird-200", "car-196", "dog-120", "flower-102", "pet-37"))
    assert "Hub" not in error.split("did you mean")[0]


def test_recipe_with_max_steps_0_is_refused(tmp_path, micro_checkpoint, toy_dataset_dir, capsys):
    argv = _command("train", tmp_path, micro_checkpoint, toy_dataset_dir)
    recipe = Path(argv[2])
    recipe.write_text(recipe.read_text().replace("max_steps: 1", "max_steps: 0"))
    error = _fails(argv, capsys)
    assert "max_steps is 0" in error
    assert not (tmp_path / "train-output" / "final").exists()


def test_recipe_with_no_epochs_and_no_max_steps_is_refused(tmp_path, micro_checkpoint, toy_dataset_dir, capsys):
    argv = _command("train", tmp_path, micro_checkpoint, toy_dataset_dir)
    recipe = Path(argv[2])
    recipe.write_text(recipe.read_text().replace("max_steps: 1", "max_steps: -1\nnum_train_epochs: 0"))
    error = _fails(argv, capsys)
    assert "num_train_epochs is 0" in error


@pytest.mark.parametrize("field, value, expected", [
    ("gradient_accumulation_steps", "0", "gradient_accumulation_steps must be a finite number >= 1, got 0"),
    ("per_device_train_batch_size", "-2", "per_device_train_batch_size must be a finite number >= 1, got -2"),
    ("learning_rate", "inf", "learning_rate must be a finite number > 0, got inf"),
    ("learning_rate", "0", "learning_rate must be a finite number > 0, got 0"),
    ("max_grad_norm", "nan", "max_grad_norm must be a finite number >= 0, got nan"),
    ("warmup_steps", "-5", "warmup_steps must be a finite number >= 0, got -5"),
    ("adam_beta2", "1.5", "adam_beta2 must be a finite number >= 0 and <= 1, got 1.5"),
    ("object_attribute_weight", "-inf", "object_attribute_weight must be a finite number >= 0, got -inf"),
    ("init_temperature", "0", "init_temperature must be a finite number > 0, got 0"),
    ("lora_r", "0", "lora_r must be a finite number >= 1, got 0"),
    ("lora_dropout", "1.5", "lora_dropout must be a finite number >= 0 and <= 1, got 1.5"),
])
def test_a_numeric_training_argument_out_of_range_is_refused_before_any_weight_loads(tmp_path, toy_dataset_dir,
                                                                                      capsys, field, value, expected):
    # The model folder does not exist: the argument must be refused before anything tries to load it.
    argv = _command("train", tmp_path, tmp_path / "no-such-model", toy_dataset_dir) + [f"--{field}={value}"]
    error = _fails(argv, capsys)
    assert expected in error and "no-such-model" not in error
    assert not (tmp_path / "train-output").exists()


@pytest.mark.parametrize("setting, expected", [
    ("stage1_steps=abc", "stage1_steps must be an integer, got 'abc'"),
    ("stage1_steps=1.5", "stage1_steps must be an integer, got 1.5"),
    ("batch_size=0", "batch_size must be at least 1, got 0"),
    ("learning_rate=fast", "learning_rate must be a number, got 'fast'"),
    ("freeze_vision_tower=maybe", "freeze_vision_tower must be true or false, got 'maybe'"),
    ("synth=3", "synth must be a mapping, got 3"),
    ("closed_set_ratio=2", "closed_set_ratio must be between 0 and 1, got 2"),
])
def test_demo_settings_of_the_wrong_type_are_refused_before_anything_runs(setting, expected, tmp_path, capsys):
    output = tmp_path / "demo"
    error = _fails(["demo", "--quick", "--output-dir", str(output), "--set", setting], capsys)
    assert expected in error
    assert not output.exists()


def test_demo_reads_exponent_notation_as_a_number():
    """YAML 1.1 reads "2e-3" (no dot) as text; a learning rate written so is still a number."""
    from finedefics_training.demo.plan import apply_overrides, quick_plan

    plan = apply_overrides(quick_plan(), {"learning_rate": "2e-3", "choice_lookup_share": "5E-1"})
    assert plan.learning_rate == 0.002 and plan.choice_lookup_share == 0.5


def test_benchmark_name_that_cannot_be_loaded_lists_the_known_ones(tmp_path, micro_checkpoint, capsys):
    error = _fails(["eval", "--model", str(micro_checkpoint), "--benchmark", "no-such-benchmark",
                    "--output-dir", str(tmp_path / "eval")], capsys)  # the tests run offline: no Hub to ask
    assert "unknown benchmark 'no-such-benchmark': not a local folder" in error
    assert all(name in error for name in ("aircraft-102", "bird-200", "car-196", "dog-120", "flower-102", "pet-37"))


def test_convert_onto_its_own_source_is_refused_and_leaves_the_source_whole(tmp_path, micro_checkpoint, capsys):
    before = {path.name: path.read_bytes() for path in micro_checkpoint.iterdir() if path.is_file()}
    error = _fails(["convert", str(micro_checkpoint), str(micro_checkpoint)], capsys)
    assert "is the source folder" in error and str(micro_checkpoint) in error
    assert {path.name: path.read_bytes() for path in micro_checkpoint.iterdir() if path.is_file()} == before


def test_init_model_output_that_is_a_file_is_refused_naming_it(tmp_path, toy_dataset_dir, capsys):
    output = tmp_path / "starting-model"
    output.write_text("not a folder")
    error = _fails(["init-model", "--corpus", str(toy_dataset_dir), str(output)], capsys)
    assert f"{output} is a file" in error


@pytest.mark.parametrize("command", ["train", "eval", "convert", "push"])
def test_a_config_of_another_family_over_the_weights_is_refused_naming_both(command, tmp_path, micro_checkpoint,
                                                                            toy_dataset_dir, capsys):
    from modeling_finedefics.families import FAMILIES

    mislabelled = _copy(micro_checkpoint, tmp_path, "mislabelled")  # Idefics2 weights
    config = json.loads((mislabelled / "config.json").read_text())
    config["model_type"] = FAMILIES["llava"].model_type
    (mislabelled / "config.json").write_text(json.dumps(config))

    error = _fails(_command(command, tmp_path, mislabelled, toy_dataset_dir), capsys)

    assert "is a llava config" in error and "are idefics2 weights" in error
    assert not (tmp_path / f"{command}-output").exists() or not any((tmp_path / f"{command}-output").iterdir())


@pytest.fixture
def nan_checkpoint(tmp_path, micro_checkpoint):
    """The micro checkpoint with NaN in its decoder's final norm: every logit it produces is NaN."""
    from safetensors.torch import load_file, save_file

    broken = _copy(micro_checkpoint, tmp_path, "nan-weights")
    tensors = load_file(broken / "model.safetensors")
    tensors["model.text_model.norm.weight"] = torch.full_like(tensors["model.text_model.norm.weight"], float("nan"))
    save_file(tensors, broken / "model.safetensors", metadata={"format": "pt"})
    return broken


def test_a_non_finite_loss_stops_training_naming_step_and_term_and_writes_no_final(tmp_path, nan_checkpoint,
                                                                                   toy_dataset_dir, capsys):
    error = _fails(_command("train", tmp_path, nan_checkpoint, toy_dataset_dir), capsys)
    assert "training step 1: non-finite loss term(s) lm_loss = nan" in error
    assert not (tmp_path / "train-output" / "final").exists()


def test_eval_refuses_a_model_with_non_finite_weights_naming_the_parameter(tmp_path, nan_checkpoint, toy_dataset_dir,
                                                                           capsys):
    error = _fails(_command("eval", tmp_path, nan_checkpoint, toy_dataset_dir), capsys)
    assert "the weights hold NaN or inf values (in model.text_model.norm.weight)" in error
    assert not (tmp_path / "eval-output" / "report.json").exists()


def test_a_full_disk_while_final_is_written_is_one_line_naming_the_folder(tmp_path, micro_checkpoint, toy_dataset_dir,
                                                                          monkeypatch, capsys):
    import errno

    import transformers.modeling_utils

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(transformers.modeling_utils, "safe_save_file", disk_full)
    error = _fails(_command("train", tmp_path, micro_checkpoint, toy_dataset_dir), capsys)
    assert f"cannot write in {tmp_path / 'train-output' / 'final'}: No space left on device" in error
