"""The trust policy (docs/SECURITY.md), through the real commands: a checkpoint folder, a recipe, a shard index and a
CSV are someone else's data. Code planted in them writes a marker file if it ever runs; the tests fail if it does.
"""

import json
import shutil
from pathlib import Path

import pytest
import yaml
from PIL import Image

from finedefics_cli import main

CODE_FILES = ("configuration_finedefics.py", "modeling_finedefics.py", "processing_finedefics.py")
OWN_AUTO_MAP = {"AutoConfig": "configuration_finedefics.FinedeficsConfig",
                "AutoModelForImageTextToText": "modeling_finedefics.FinedeficsForConditionalGeneration"}
FOREIGN_AUTO_MAP = {"AutoModel": "other-user/repo--evil.Evil", "AutoModelForCausalLM": "evil.Evil"}
SECRET = "hf_tH1sMustNeverLeave"


def payload(marker: Path) -> str:
    """Python that, if imported, leaves ``marker`` behind."""
    return f"\nimport pathlib\npathlib.Path({str(marker)!r}).write_text('the checkpoint code ran')\n"


def planted_checkpoint(micro_checkpoint: Path, tmp_path: Path, marker: Path, name: str = "planted") -> Path:
    """A copy of the micro checkpoint whose code files, an extra module and a foreign auto_map all run ``marker``."""
    folder = tmp_path / name
    shutil.copytree(micro_checkpoint, folder)
    for code_file in CODE_FILES:
        assert (folder / code_file).is_file(), code_file  # the payload must sit where a loader would look
        with (folder / code_file).open("a") as handle:
            handle.write(payload(marker))
    (folder / "evil.py").write_text(payload(marker) + "class Evil:\n    pass\n")
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {**config.get("auto_map", {}), **FOREIGN_AUTO_MAP}
    (folder / "config.json").write_text(json.dumps(config))
    tokenizer_config = json.loads((folder / "tokenizer_config.json").read_text())
    tokenizer_config["auto_map"] = {"AutoTokenizer": ["evil.Evil", None]}
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    return folder


def installed_code(name: str) -> bytes:
    import modeling_finedefics

    return (Path(modeling_finedefics.__file__).parent / name).read_bytes()


def auto_maps(folder: Path) -> dict:
    return {name: json.loads((folder / name).read_text()).get("auto_map")
            for name in ("config.json", "processor_config.json", "tokenizer_config.json") if (folder / name).is_file()}


def every_byte_under(folder: Path) -> bytes:
    return b"".join(path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file())


def failure(argv, capsys) -> str:
    """Runs the CLI, checks it refused the input (exit 2, one line, no traceback) and returns the line."""
    assert main(argv) == 2
    error = capsys.readouterr().err
    assert f"finedefics {argv[0]}: error:" in error and "Traceback" not in error
    return error


# ----------------------------------------------------------------------------- push runs no checkpoint code
def test_push_stage_only_runs_no_code_from_the_checkpoint(micro_checkpoint, tmp_path, capsys):
    marker = tmp_path / "MARKER"
    checkpoint = planted_checkpoint(micro_checkpoint, tmp_path, marker)
    staged = tmp_path / "staged-untrusted"

    assert main(["push", str(checkpoint), "--repo-id", "me/x", "--stage-only", str(staged)]) == 0

    assert not marker.exists(), "push imported code from the checkpoint folder"
    for name in CODE_FILES:  # the installed package's files are staged, not the planted ones
        assert (staged / name).read_bytes() == installed_code(name), name
    assert not (staged / "evil.py").exists()
    assert auto_maps(staged)["config.json"] == OWN_AUTO_MAP
    assert "AutoTokenizer" not in auto_maps(staged)["tokenizer_config.json"]


def test_push_trust_remote_code_does_import_the_checkpoint_code(micro_checkpoint, tmp_path):
    """The control: the same planted payload runs when the user says they trust the folder, so the test above
    would see it run."""
    marker = tmp_path / "MARKER"
    checkpoint = planted_checkpoint(micro_checkpoint, tmp_path, marker, name="planted-trusted")

    main(["push", str(checkpoint), "--repo-id", "me/x", "--stage-only", str(tmp_path / "staged-trusted-payload"),
          "--trust-remote-code"])

    assert marker.exists()


# ----------------------------------------------------------------------------- foreign auto_map entries
def test_convert_drops_foreign_auto_map_entries(micro_checkpoint, tmp_path, caplog):
    marker = tmp_path / "MARKER"
    checkpoint = planted_checkpoint(micro_checkpoint, tmp_path, marker)

    assert main(["convert", str(checkpoint), str(tmp_path / "converted")]) == 0

    maps = auto_maps(tmp_path / "converted")
    assert maps["config.json"] == OWN_AUTO_MAP and "auto_map" not in json.loads(
        (tmp_path / "converted" / "tokenizer_config.json").read_text())
    assert "evil.Evil" in caplog.text and "dropped auto_map entry" in caplog.text
    assert not marker.exists()


def test_training_drops_foreign_auto_map_and_keeps_credentials_out_of_its_outputs(micro_checkpoint, toy_dataset_dir,
                                                                                   tmp_path, capsys, caplog):
    marker = tmp_path / "MARKER"
    start = planted_checkpoint(micro_checkpoint, tmp_path, marker)
    output = tmp_path / "run"
    recipe = dict(model_name_or_path=str(start), dataset_dir=str(toy_dataset_dir), output_dir=str(output),
                  tuning="full", per_device_train_batch_size=8, max_steps=1, save_strategy="no", report_to="none",
                  use_cpu=True, dataloader_num_workers=0, disable_tqdm=True, num_negatives=2, hub_token=SECRET)
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))

    assert main(["train", "--config", str(tmp_path / "recipe.yaml")]) == 0

    final = output / "final"
    for name, auto_map in auto_maps(final).items():
        assert not set(map(str, (auto_map or {}).values())) & {"other-user/repo--evil.Evil", "evil.Evil"}, name
    assert not (final / "training_args.bin").exists()
    assert SECRET.encode() not in every_byte_under(output)
    captured = capsys.readouterr()
    assert SECRET not in captured.out + captured.err + caplog.text
    assert not marker.exists()


# ----------------------------------------------------------------------------- credentials
def test_push_keeps_recipe_credentials_and_training_args_out_of_the_upload(micro_checkpoint, tmp_path, capsys,
                                                                            caplog):
    checkpoint = tmp_path / "checkpoint"
    shutil.copytree(micro_checkpoint, checkpoint)
    (checkpoint / "training_args.bin").write_bytes(b"pickled arguments holding " + SECRET.encode())
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"model_name_or_path": "HuggingFaceM4/idefics2-8b", "hub_token": SECRET,
                                      "wandb_api_key": SECRET + "2", "lora_r": 8, "eos_token": "</s>"}))
    staged = tmp_path / "staged"

    assert main(["push", str(checkpoint), "--repo-id", "me/x", "--stage-only", str(staged),
                 "--recipe", str(recipe)]) == 0

    assert SECRET.encode() not in every_byte_under(staged)
    assert not (staged / "training_args.bin").exists()
    card = (staged / "README.md").read_text()
    assert "hub_token: <redacted>" in card and "wandb_api_key: <redacted>" in card
    assert "lora_r: 8" in card and "eos_token: </s>" in card  # only credentials are redacted
    captured = capsys.readouterr()
    assert SECRET not in captured.out + captured.err + caplog.text


# ----------------------------------------------------------------------------- paths from an index or a CSV
def _point_index_at(checkpoint: Path, shard: str) -> None:
    from safetensors import safe_open

    with safe_open(checkpoint / "model.safetensors", framework="pt") as reader:
        keys = list(reader.keys())
    index = {"metadata": {}, "weight_map": {key: shard for key in keys}}
    (checkpoint / "model.safetensors.index.json").write_text(json.dumps(index))


@pytest.mark.parametrize("escape", ["dot-dot", "symlink"])
@pytest.mark.parametrize("command", ["push", "eval", "convert"])
def test_a_shard_index_naming_a_file_outside_the_checkpoint_is_refused(micro_checkpoint, toy_dataset_dir, tmp_path,
                                                                       capsys, escape, command):
    checkpoint = tmp_path / "checkpoint"
    shutil.copytree(micro_checkpoint, checkpoint)
    outside = tmp_path / "outside.safetensors"
    shutil.copy2(checkpoint / "model.safetensors", outside)
    if escape == "symlink":
        (checkpoint / "model-00001-of-00001.safetensors").symlink_to(outside)
        _point_index_at(checkpoint, "model-00001-of-00001.safetensors")
    else:
        _point_index_at(checkpoint, "../outside.safetensors")
    output = tmp_path / "out"
    argv = {"push": ["push", str(checkpoint), "--repo-id", "me/x", "--stage-only", str(output)],
            "eval": ["eval", "--model", str(checkpoint), "--benchmark", str(toy_dataset_dir), "--split", "train",
                     "--limit", "2", "--no-plots", "--no-progress", "--output-dir", str(output)],
            "convert": ["convert", str(checkpoint), str(output)]}[command]

    error = failure(argv, capsys)

    assert "model.safetensors.index.json: weight_map shard" in error and "outside" in error
    assert not output.exists() or not any(output.iterdir())


def test_a_csv_image_that_is_a_link_leading_out_of_the_image_root_is_refused_unless_allowed(tmp_path, capsys):
    from test_bad_inputs_data import csv_row, other_rows, write_csv

    root = tmp_path / "images"
    root.mkdir()
    for index, colour in enumerate(["red", "blue", "green"]):
        Image.new("RGB", (16, 16), colour).save(root / f"{index}.png")
    Image.new("RGB", (16, 16), "white").save(tmp_path / "private.png")
    (root / "link-out.png").symlink_to(tmp_path / "private.png")
    (root / "link-in.png").symlink_to(root / "1.png")  # a link that stays inside is how datasets are assembled
    bad = write_csv(tmp_path / "escape.csv", [csv_row(image_path="link-out.png"), *other_rows()])
    fine = write_csv(tmp_path / "fine.csv", [csv_row(image_path="link-in.png"), *other_rows()])
    argv = ["data", "csv", str(bad), "--image-root", str(root), "--output", str(tmp_path / "out")]

    error = failure(argv, capsys)
    assert "escape.csv, row 1 (line 2), field 'image_path'" in error and "symbolic link" in error
    assert not (tmp_path / "out").exists()
    assert main([*argv, "--allow-images-outside-root"]) == 0
    assert main(["data", "csv", str(fine), "--image-root", str(root), "--output", str(tmp_path / "fine-out")]) == 0
