"""The demo's phase runner: each phase runs once (``state.json`` makes reruns resume), with one console
line per phase and one progress bar per training phase."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

# One logger for the whole demo, as when it was one module: the console lines keep their
# "finedefics_training.demo:" prefix.
logger = logging.getLogger(__package__)


class Phases:
    """Runs named phases once, one console line per phase with its time; state.json makes reruns resume."""

    def __init__(self, output_dir: Path):
        self.state_file = output_dir / "state.json"
        self.state = json.loads(self.state_file.read_text()) if self.state_file.is_file() else {"done": {}}
        self.started = time.time()

    def done(self, name: str) -> bool:
        return name in self.state["done"]

    def run(self, name: str, function, *args, **kwargs):
        if self.done(name):
            logger.info("%-34s already done (%.0f s), skipped", name, self.state["done"][name])
            return None
        start = time.time()
        result = function(*args, **kwargs)
        elapsed = time.time() - start
        self.state["done"][name] = elapsed
        self.state_file.write_text(json.dumps(self.state, indent=2))
        logger.info("%-34s done in %5.0f s (total %4.0f s)", name, elapsed, time.time() - self.started)
        return result

class PhaseProgress:
    """One progress bar for a training phase (with the running loss) instead of Trainer's printed logs."""

    def __init__(self, desc: str):
        self.desc = desc

    def callback(self):
        from tqdm.auto import tqdm
        from transformers import TrainerCallback

        desc = self.desc

        class _Bar(TrainerCallback):
            bar = None

            def on_train_begin(self, args, state, control, **kwargs):
                self.bar = tqdm(total=state.max_steps, initial=state.global_step, desc=desc, unit="step", leave=False)

            def on_step_end(self, args, state, control, **kwargs):
                self.bar.update(state.global_step - self.bar.n)

            def on_log(self, args, state, control, logs=None, **kwargs):
                if self.bar is not None and logs and "loss" in logs:
                    self.bar.set_postfix(loss=f"{logs['loss']:.3f}")

            def on_train_end(self, args, state, control, **kwargs):
                self.bar.close()

        return _Bar()
