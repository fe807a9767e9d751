"""`finedefics push`: the staged folder in full, the model card's metadata, and uploads to a recording fake Hub."""

import json
import shutil
import socket
import time
from pathlib import Path

import pytest
import torch
from conftest import HUB_TOKEN

# The shape `finedefics eval` writes to report.json (finedefics_eval.runner.evaluate_model), two scoring modes.
REPORT = {
    "model": "runs/finedefics/stage2/final", "benchmark": "bird-200", "split": "test", "seed": 0,
    "n": 400, "n_scored": 400,
    "modes": {
        "generate": {"n": 400, "accuracy": 0.6971, "ci95": [0.652, 0.741], "macro_accuracy": 0.6903,
                     "failures": 2, "failure_rate": 0.005, "per_class": {"Velmoran Thistlewing": 0.5}},
        "likelihood": {"n": 400, "accuracy": 0.8467, "ci95": [0.81, 0.88], "macro_accuracy": 0.8401,
                       "failures": 0, "failure_rate": 0.0, "per_class": {"Velmoran Thistlewing": 1.0}},
    },
}
RECIPE_YAML = "model_name_or_path: HuggingFaceM4/idefics2-8b\ntuning: qlora\nlora_r: 8\nlearning_rate: 2.0e-4\n"
CODE_FILES = {"configuration_finedefics.py", "modeling_finedefics.py", "processing_finedefics.py", "alignment.py"}
EXPECTED_FILES = CODE_FILES | {
    "README.md", "config.json", "generation_config.json", "model.safetensors",
    "processor_config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja",
}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tiny_processor):
    """A merged micro checkpoint as a stage writes it, plus training leftovers that must not be uploaded."""
    import modeling_finedefics  # noqa: F401  (marks the classes so save_pretrained writes code files)
    from modeling_finedefics.tiny import build_tiny_model

    folder = tmp_path_factory.mktemp("checkpoint")
    build_tiny_model(tiny_processor, preset="micro", seed=0).save_pretrained(folder)
    tiny_processor.save_pretrained(folder)
    (folder / "training_args.bin").write_bytes(b"pickled trainer state")
    (folder / "trainer_state.json").write_text("{}")
    return folder


def closed_port_endpoint() -> str:
    """An http endpoint on 127.0.0.1 whose port was free a moment ago and has no listener."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def copy_checkpoint(checkpoint: Path, destination: Path, drop=()) -> Path:
    shutil.copytree(checkpoint, destination, ignore=shutil.ignore_patterns(*drop))
    return destination


@pytest.fixture
def staged(checkpoint, tmp_path):
    from finedefics_training.push import stage_for_hub

    return stage_for_hub(checkpoint, tmp_path / "staged", report=REPORT, recipe=RECIPE_YAML)


# ----------------------------------------------------------------------------- staging
def test_stage_copies_exactly_the_files_a_hub_user_needs(checkpoint, staged):
    from finedefics_training.push import staged_files

    assert set(staged_files(staged)) == EXPECTED_FILES  # no training_args.bin / trainer_state.json
    for name in EXPECTED_FILES - {"README.md", "config.json", "processor_config.json", "tokenizer_config.json"}:
        assert (staged / name).read_bytes() == (checkpoint / name).read_bytes(), name
    assert (staged / "model.safetensors").samefile(checkpoint / "model.safetensors")  # hard link, no 16 GB copy
    config = json.loads((staged / "config.json").read_text())
    assert config["model_type"] == "finedefics"
    assert config["auto_map"] == {
        "AutoConfig": "configuration_finedefics.FinedeficsConfig",
        "AutoModelForImageTextToText": "modeling_finedefics.FinedeficsForConditionalGeneration",
    }
    processor_config = json.loads((staged / "processor_config.json").read_text())
    assert processor_config["auto_map"]["AutoProcessor"] == "processing_finedefics.FinedeficsProcessor"


def test_staged_folder_loads_with_the_same_weights_and_processor(staged):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from finedefics_training.push import validate_staged
    from modeling_finedefics.tiny import build_tiny_model

    validate_staged(staged)
    model = AutoModelForImageTextToText.from_pretrained(staged, trust_remote_code=True)
    processor = AutoProcessor.from_pretrained(staged, trust_remote_code=True)
    assert type(processor).__name__ == "FinedeficsProcessor"
    reference = build_tiny_model(processor, preset="micro", seed=0).state_dict()
    loaded = model.state_dict()
    assert loaded.keys() == reference.keys()
    for name, tensor in reference.items():
        torch.testing.assert_close(loaded[name], tensor, msg=name)


def test_trusted_validation_imports_the_shipped_code_files(staged):
    from finedefics_training.push import validate_staged

    with (staged / "configuration_finedefics.py").open("a") as code:
        code.write("\nraise ImportError('broken shipped code')\n")
    with pytest.raises(ValueError, match="does not load with its shipped code.*broken shipped code"):
        validate_staged(staged, trust_remote_code=True)
    # Untrusted, the edited file is refused without being imported.
    with pytest.raises(ValueError, match="not the installed package's.*configuration_finedefics.py"):
        validate_staged(staged)


def test_a_failed_staging_leaves_an_empty_folder_behind(checkpoint, tmp_path):
    from finedefics_training.push import stage_for_hub

    broken = copy_checkpoint(checkpoint, tmp_path / "broken")
    with (broken / "modeling_finedefics.py").open("a") as code:
        code.write("\nraise ImportError('broken shipped code')\n")
    with pytest.raises(ValueError, match="broken shipped code"):
        stage_for_hub(broken, tmp_path / "staged", validate=True, trust_remote_code=True)
    assert list((tmp_path / "staged").iterdir()) == []
    with pytest.raises(FileNotFoundError, match="eval report not found"):
        stage_for_hub(checkpoint, tmp_path / "staged", report=tmp_path / "missing.json")


def test_code_files_come_from_the_installed_package_when_the_checkpoint_lacks_them(checkpoint, tmp_path):
    import modeling_finedefics
    from finedefics_training.push import stage_for_hub

    bare = copy_checkpoint(checkpoint, tmp_path / "bare", drop=tuple(CODE_FILES))
    staged = stage_for_hub(bare, tmp_path / "staged", validate=True)
    package_dir = Path(modeling_finedefics.__file__).parent
    for name in CODE_FILES:
        assert (staged / name).read_bytes() == (package_dir / name).read_bytes()


def test_model_card_metadata_parses_back_with_eval_numbers_and_recipe(staged):
    from huggingface_hub import ModelCard

    card = ModelCard.load(staged / "README.md")
    assert card.data.library_name == "transformers"
    assert card.data.pipeline_tag == "image-text-to-text"
    assert card.data.license == "apache-2.0"
    assert card.data.base_model == "HuggingFaceM4/idefics2-8b"  # from the recipe's model_name_or_path
    assert {"finedefics", "fine-grained-visual-recognition"} <= set(card.data.tags)
    results = {result.metric_config: result for result in card.data.eval_results}
    assert results.keys() == {"generate", "likelihood"}
    assert (results["generate"].metric_value, results["likelihood"].metric_value) == (69.71, 84.67)
    assert results["generate"].metric_type == "accuracy" and results["generate"].dataset_split == "test"
    assert "69.71" in card.text and "65.20 – 74.10" in card.text  # the results table, with the interval
    assert "lora_r: 8" in card.text  # the recipe
    assert "No evaluation results yet" not in card.text


def test_report_is_read_from_a_folder_and_base_model_argument_wins(checkpoint, tmp_path):
    from huggingface_hub import ModelCard

    from finedefics_training.push import stage_for_hub

    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "report.json").write_text(json.dumps(REPORT))
    staged = stage_for_hub(checkpoint, tmp_path / "staged", report=tmp_path / "eval", base_model="me/base")
    card = ModelCard.load(staged / "README.md")
    assert card.data.base_model == "me/base"
    assert [result.metric_value for result in card.data.eval_results] == [69.71, 84.67]
    with pytest.raises(ValueError, match="not a finedefics eval report"):
        stage_for_hub(checkpoint, tmp_path / "other", report={"score": 0.5})
    assert not (tmp_path / "other").exists()


def test_results_already_in_the_checkpoint_card_are_kept(checkpoint, tmp_path):
    from huggingface_hub import ModelCard

    from finedefics_eval.model_card import write_model_card
    from finedefics_training.push import stage_for_hub

    evaluated = copy_checkpoint(checkpoint, tmp_path / "evaluated")
    car_report = {**REPORT, "benchmark": "car-196",
                  "modes": {"generate": {**REPORT["modes"]["generate"], "accuracy": 0.8}}}
    write_model_card(evaluated, car_report, base_model="me/base")  # what `finedefics eval` leaves in the folder

    staged = stage_for_hub(evaluated, tmp_path / "staged", report=REPORT)
    card = ModelCard.load(staged / "README.md")
    values = sorted(result.metric_value for result in card.data.eval_results)
    assert values == [69.71, 80.0, 84.67]  # car-196 from the folder's card, bird-200 from the report
    assert card.data.base_model == "me/base"


@pytest.mark.parametrize("breakage, error, message", [
    (lambda folder: (folder / "adapter_config.json").write_text("{}"), ValueError, "merge"),
    (lambda folder: (folder / "model.safetensors").rename(folder / "pytorch_model.bin"), ValueError, "safetensors"),
    (lambda folder: (folder / "model.safetensors").unlink(), FileNotFoundError, "no model weights"),
    (lambda folder: (folder / "config.json").unlink(), FileNotFoundError, "config.json"),
    (lambda folder: (folder / "generation_config.json").unlink(), FileNotFoundError, "generation_config.json"),
])
def test_incomplete_or_unmerged_checkpoints_are_refused(checkpoint, tmp_path, breakage, error, message):
    from finedefics_training.push import stage_for_hub

    broken = copy_checkpoint(checkpoint, tmp_path / "broken")
    breakage(broken)
    with pytest.raises(error, match=message):
        stage_for_hub(broken, tmp_path / "staged")
    assert not (tmp_path / "staged").exists()


def test_a_non_empty_staging_folder_is_refused(checkpoint, tmp_path):
    from finedefics_training.push import stage_for_hub

    (tmp_path / "staged").mkdir()
    (tmp_path / "staged" / "stale.bin").write_bytes(b"old")
    with pytest.raises(ValueError, match="not empty"):
        stage_for_hub(checkpoint, tmp_path / "staged")


# ----------------------------------------------------------------------------- upload
def test_push_sends_every_staged_file_to_a_private_repo(staged, hub):
    from finedefics_training.push import push_to_hub

    result = push_to_hub(staged, "tester/finedefics-micro", token=HUB_TOKEN, private=True)

    create = next(r for r in hub.requests if r.path == "/api/repos/create")
    assert create.json() == {"name": "finedefics-micro", "organization": "tester", "visibility": "private"}
    (commit,) = hub.commits
    assert (commit.repo_id, commit.revision, commit.create_pr) == ("tester/finedefics-micro", "main", False)
    assert set(commit.files) == {path.name for path in staged.iterdir()} == EXPECTED_FILES
    assert commit.files["config.json"] == (staged / "config.json").read_bytes()
    assert commit.files["model.safetensors"] == (staged / "model.safetensors").read_bytes()
    assert commit.header["summary"] == "Upload Finedefics checkpoint"
    assert result["commit_url"] == f"{hub.endpoint}/tester/finedefics-micro/commit/{commit.oid}"
    assert result["pr_url"] is None and result["files"] == sorted(EXPECTED_FILES)
    assert hub.unknown == []


def test_push_to_a_new_branch_creates_it_and_a_token_from_the_environment_works(staged, hub, monkeypatch):
    from finedefics_training.push import push_to_hub

    monkeypatch.setenv("HF_TOKEN", HUB_TOKEN)
    push_to_hub(staged, "tester/finedefics-micro", revision="experiment-1")
    push_to_hub(staged, "tester/finedefics-micro", revision="experiment-1")  # existing repo and branch are fine

    assert hub.repos["tester/finedefics-micro"].branches == {"main", "experiment-1"}
    assert hub.repos["tester/finedefics-micro"].private is False
    assert [commit.revision for commit in hub.commits] == ["experiment-1", "experiment-1"]


def test_create_pr_reaches_the_server_and_returns_the_pr_url(staged, hub):
    from finedefics_training.push import push_to_hub

    result = push_to_hub(staged, "tester/finedefics-micro", token=HUB_TOKEN, create_pr=True)

    (commit,) = hub.commits
    assert commit.create_pr and commit.revision == "main"
    preupload = next(r for r in hub.requests if "/preupload/" in r.path)
    assert preupload.query == {"create_pr": ["1"]}
    assert result["pr_url"] == f"{hub.endpoint}/tester/finedefics-micro/discussions/1"


def test_missing_token_is_a_clear_error_before_anything_is_sent(staged, hub):
    from finedefics_training.push import push_to_hub

    with pytest.raises(ValueError, match="no Hugging Face token.*HF_TOKEN.*hf auth login"):
        push_to_hub(staged, "tester/finedefics-micro")
    assert hub.requests == []


def test_a_rejected_token_is_a_clear_error(staged, hub):
    from finedefics_training.push import push_to_hub

    with pytest.raises(ValueError, match="rejected the token"):
        push_to_hub(staged, "tester/finedefics-micro", token="hf_wrong")
    assert hub.commits == []


def test_unreachable_endpoint_fails_fast_naming_it(staged, hub, monkeypatch):
    from finedefics_training.push import push_to_hub

    endpoint = closed_port_endpoint()
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_ETAG_TIMEOUT", 2)
    started = time.monotonic()
    with pytest.raises(ConnectionError, match=f"cannot reach the Hub endpoint {endpoint}"):
        push_to_hub(staged, "tester/finedefics-micro", token=HUB_TOKEN)
    assert time.monotonic() - started < 5


def test_offline_mode_is_a_clear_error(staged, hub, monkeypatch):
    from huggingface_hub import constants

    from finedefics_training.push import push_to_hub

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ValueError, match="HF_HUB_OFFLINE"):
        push_to_hub(staged, "tester/finedefics-micro", token=HUB_TOKEN)


@pytest.mark.parametrize("kwargs, message", [
    (dict(repo_id="no-namespace"), "USER/NAME"),
    (dict(repo_id="tester/x", revision="dev", create_pr=True), "not both"),
])
def test_bad_targets_are_refused(staged, kwargs, message):
    from finedefics_training.push import push_to_hub

    with pytest.raises(ValueError, match=message):
        push_to_hub(staged, token=HUB_TOKEN, **kwargs)


# ----------------------------------------------------------------------------- command line
def test_cli_push_stages_and_uploads(checkpoint, hub, tmp_path, capsys):
    from finedefics_cli import main

    (tmp_path / "recipe.yaml").write_text(RECIPE_YAML)
    code = main(["push", str(checkpoint), "--repo-id", "tester/cli", "--token", HUB_TOKEN, "--private",
                 "--recipe", str(tmp_path / "recipe.yaml"), "--create-pr"])

    assert code == 0
    assert hub.repos["tester/cli"].private
    (commit,) = hub.commits
    assert set(commit.files) == EXPECTED_FILES and commit.create_pr
    assert b"lora_r: 8" in commit.files["README.md"]
    assert b'from_pretrained("tester/cli", trust_remote_code=True)' in commit.files["README.md"]
    assert f"{hub.endpoint}/tester/cli/discussions/1" in capsys.readouterr().out
    assert not list(checkpoint.parent.glob(".finedefics-push-*"))  # the temporary staging folder is gone


def test_cli_stage_only_uploads_nothing(checkpoint, hub, tmp_path):
    from finedefics_cli import main

    assert main(["push", str(checkpoint), "--repo-id", "tester/cli", "--stage-only", str(tmp_path / "out")]) == 0
    assert {path.name for path in (tmp_path / "out").iterdir()} == EXPECTED_FILES
    assert hub.requests == []


def test_cli_reports_bad_input_and_unreachable_hub_in_one_line(checkpoint, hub, tmp_path, monkeypatch, capsys):
    from finedefics_cli import main

    adapter = copy_checkpoint(checkpoint, tmp_path / "adapter")
    (adapter / "adapter_config.json").write_text("{}")
    assert main(["push", str(adapter), "--repo-id", "tester/cli", "--token", HUB_TOKEN]) == 2
    assert main(["push", str(checkpoint), "--repo-id", "tester/cli"]) == 2  # no token
    endpoint = closed_port_endpoint()
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    assert main(["push", str(checkpoint), "--repo-id", "tester/cli", "--token", HUB_TOKEN]) == 1
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 3 and all(line.startswith("finedefics push: error:") for line in errors)
    assert "merge" in errors[0] and "hf auth login" in errors[1] and endpoint in errors[2]
