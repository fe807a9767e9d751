"""Worker for test_resume.py: run one stage from a recipe; optionally SIGKILL itself after step N.

Running it again on the same output_dir resumes from the last checkpoint (as `finedefics train` does).
Every optimizer step this process runs is printed as ``ran step N``, so the caller can tell a resume
from a restart at step 0.
"""

import logging
import os
import signal
import sys

from transformers import TrainerCallback

from finedefics_cli.commands.train import parse_recipe
from finedefics_training.recipe import run_stage


class KillAtStep(TrainerCallback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, no final save: a real crash


class PrintSteps(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        print(f"ran step {state.global_step}", flush=True)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    recipe, kill_at = sys.argv[1], (int(sys.argv[2]) if len(sys.argv) > 2 else None)
    _, (model_args, data_args, training_args) = parse_recipe(["--config", recipe])
    callbacks = [PrintSteps()] + ([KillAtStep(kill_at)] if kill_at else [])
    run_stage(model_args, data_args, training_args, callbacks=callbacks)
