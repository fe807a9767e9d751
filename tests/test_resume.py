"""Resuming an interrupted stage: after a SIGKILL between steps, and after a kill while a checkpoint was written."""

import json
import logging
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file
from transformers import TrainerCallback

WORKER = Path(__file__).with_name("kill_and_resume_worker.py")


def _recipe(tmp_path, name, **fields):
    defaults = dict(tuning="full", per_device_train_batch_size=4, learning_rate=2e-3, logging_steps=1,
                    report_to="none", use_cpu=True, seed=0, num_negatives=2, stage=1,
                    dataloader_num_workers=0, disable_tqdm=True, save_strategy="steps", save_steps=2)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({**defaults, **fields}))
    return path


def _steps_run(stdout: str) -> list[int]:
    """The optimizer steps a worker process ran (it prints ``ran step N`` after each)."""
    return [int(step) for step in re.findall(r"^ran step (\d+)$", stdout, flags=re.MULTILINE)]


class RecordSteps(TrainerCallback):
    def __init__(self):
        self.steps = []

    def on_step_end(self, args, state, control, **kwargs):
        self.steps.append(state.global_step)


def test_resume_after_sigkill_matches_an_uninterrupted_run(tmp_path, micro_checkpoint, toy_dataset_dir):
    common = dict(model_name_or_path=str(micro_checkpoint), dataset_dir=str(toy_dataset_dir), max_steps=8)
    straight = _recipe(tmp_path, "straight", output_dir=str(tmp_path / "straight"), **common)
    killed = _recipe(tmp_path, "killed", output_dir=str(tmp_path / "killed"), **common)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def run(recipe, kill_at=None):
        args = [sys.executable, str(WORKER), str(recipe)] + ([str(kill_at)] if kill_at else [])
        return subprocess.run(args, capture_output=True, text=True, env=env, timeout=600)

    uninterrupted = run(straight)
    assert uninterrupted.returncode == 0, uninterrupted.stderr[-3000:]
    assert _steps_run(uninterrupted.stdout) == list(range(1, 9))
    interrupted = run(killed, kill_at=5)
    assert interrupted.returncode == -9, interrupted.stderr[-2000:]  # really killed mid-run
    assert _steps_run(interrupted.stdout) == [1, 2, 3, 4, 5]
    assert not (tmp_path / "killed" / "final").exists()
    assert (tmp_path / "killed" / "checkpoint-4").is_dir()
    resumed = run(killed)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    # From the last checkpoint (step 4), not from step 0: only the 4 remaining steps run again.
    assert f"resuming stage 1 from {tmp_path / 'killed' / 'checkpoint-4'}" in resumed.stderr
    assert _steps_run(resumed.stdout) == [5, 6, 7, 8]
    expected = load_file(tmp_path / "straight" / "final" / "model.safetensors")
    actual = load_file(tmp_path / "killed" / "final" / "model.safetensors")
    assert expected.keys() == actual.keys()
    for key in expected:
        torch.testing.assert_close(actual[key], expected[key], rtol=0, atol=1e-6, msg=key)


def _half_write(checkpoint: Path) -> None:
    """What a kill inside Trainer._save_checkpoint leaves: weights cut short, no optimizer, no trainer state."""
    weights = checkpoint / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    for name in ("optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json"):
        (checkpoint / name).unlink()


def test_a_half_written_newest_checkpoint_is_skipped_and_the_run_resumes_from_the_one_before(
        tmp_path, micro_checkpoint, toy_dataset_dir, caplog):
    from finedefics_cli.commands.train import parse_recipe
    from finedefics_training.recipe import run_stage

    output = tmp_path / "run"
    recipe = _recipe(tmp_path, "run", model_name_or_path=str(micro_checkpoint), dataset_dir=str(toy_dataset_dir),
                     output_dir=str(output), max_steps=4)
    _, arguments = parse_recipe(["--config", str(recipe)])
    first = RecordSteps()
    run_stage(*arguments, callbacks=[first])
    assert first.steps == [1, 2, 3, 4]
    # The run is killed while checkpoint-4 is being written: checkpoint-2 is the newest complete one.
    _half_write(output / "checkpoint-4")
    shutil.rmtree(output / "final")
    (output / "log_history.json").unlink()

    _, arguments = parse_recipe(["--config", str(recipe)])
    again = RecordSteps()
    with caplog.at_level(logging.INFO, logger="finedefics_training"):
        run_stage(*arguments, callbacks=[again])
    assert again.steps == [3, 4]
    assert f"resuming stage 1 from {output / 'checkpoint-2'}" in caplog.text
    skipped = [r.getMessage() for r in caplog.records
               if r.levelno == logging.WARNING and "checkpoint-4" in r.getMessage()]
    assert skipped and "trainer_state.json" in skipped[0], caplog.text
    assert json.loads((output / "checkpoint-4" / "trainer_state.json").read_text())["global_step"] == 4
    assert (output / "final" / "model.safetensors").is_file()


def _fake_checkpoint(root: Path, step: int, state: str | None) -> Path:
    folder = root / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(b"weights")
    if state is not None:
        (folder / "trainer_state.json").write_text(state)
    return folder


def test_last_complete_checkpoint_skips_folders_whose_trainer_state_is_missing_cut_short_or_of_another_step(
        tmp_path, caplog):
    from finedefics_training.checkpoints import last_complete_checkpoint

    complete = _fake_checkpoint(tmp_path, 10, json.dumps({"global_step": 10}))
    _fake_checkpoint(tmp_path, 20, json.dumps({"global_step": 20})[:-5])  # killed while writing the state
    _fake_checkpoint(tmp_path, 30, json.dumps({"global_step": 7}))  # a state that belongs to another step
    _fake_checkpoint(tmp_path, 40, None)  # killed before the state was written
    (tmp_path / "checkpoint-50").write_text("a file, not a checkpoint folder")
    with caplog.at_level(logging.WARNING, logger="finedefics_training"):
        assert last_complete_checkpoint(tmp_path) == str(complete)
    warnings = {name: next(r.getMessage() for r in caplog.records if name in r.getMessage())
                for name in ("checkpoint-20", "checkpoint-30", "checkpoint-40")}
    assert "not valid JSON" in warnings["checkpoint-20"]
    assert "global_step 7" in warnings["checkpoint-30"]
    assert "no trainer_state.json" in warnings["checkpoint-40"]


def test_last_complete_checkpoint_is_none_when_no_checkpoint_is_complete(tmp_path, caplog):
    from finedefics_training.checkpoints import last_complete_checkpoint

    assert last_complete_checkpoint(tmp_path) is None
    _fake_checkpoint(tmp_path, 2, None)
    with caplog.at_level(logging.WARNING, logger="finedefics_training"):
        assert last_complete_checkpoint(tmp_path) is None
    assert "checkpoint-2" in caplog.text and "no complete checkpoint" in caplog.text


class _Payload:
    """Unpickles into code that leaves a marker file: what a tampered state file would carry."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return exec, (f"import pathlib; pathlib.Path({str(self.marker)!r}).write_text('unpickled code ran')",)


def test_a_tampered_state_file_on_resume_is_named_and_its_code_never_runs(tmp_path, micro_checkpoint,
                                                                         toy_dataset_dir, capsys):
    import pickle

    from finedefics_cli import main

    output, marker = tmp_path / "run", tmp_path / "MARKER"
    fields = dict(model_name_or_path=str(micro_checkpoint), dataset_dir=str(toy_dataset_dir), output_dir=str(output))
    assert main(["train", "--config", str(_recipe(tmp_path, "first", max_steps=2, **fields))]) == 0
    (output / "checkpoint-2" / "rng_state.pth").write_bytes(pickle.dumps(_Payload(marker)))
    shutil.rmtree(output / "final")
    capsys.readouterr()

    assert main(["train", "--config", str(_recipe(tmp_path, "again", max_steps=4, **fields))]) == 2

    error = capsys.readouterr().err
    assert f"{output / 'checkpoint-2' / 'rng_state.pth'} cannot be unpickled safely" in error
    assert "Traceback" not in error and error.count("error:") == 1
    assert not marker.exists() and not (output / "final").exists()


def test_a_second_run_on_a_live_runs_output_dir_is_refused_and_a_stale_lock_is_taken_over(
        tmp_path, micro_checkpoint, toy_dataset_dir, capsys, caplog):
    import socket
    import sys

    from finedefics_cli import main
    from finedefics_training.checkpoints import LOCK_FILE

    output = tmp_path / "run"
    output.mkdir()
    recipe = _recipe(tmp_path, "run", model_name_or_path=str(micro_checkpoint), dataset_dir=str(toy_dataset_dir),
                     output_dir=str(output), max_steps=1, save_strategy="no")
    first_run = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (output / LOCK_FILE).write_text(f"{first_run.pid} {socket.gethostname()}")
        assert main(["train", "--config", str(recipe)]) == 2
        error = capsys.readouterr().err
        assert f"output_dir {output} is in use by another run (pid {first_run.pid}" in error
        assert not (output / "final").exists()
    finally:
        first_run.kill()
        first_run.wait()

    # The first run was killed: its lock is stale and the next run takes it over, then releases it.
    assert main(["train", "--config", str(recipe)]) == 0
    assert "taking over the stale lock" in caplog.text
    assert (output / "final" / "model.safetensors").is_file() and not (output / LOCK_FILE).exists()
