"""Wall time of the demo's training steps, stage I and stage II: the former build's settings beside the new ones.

    python benchmarks/bench_demo_step.py --threads 1 --output demo_step.json
    python benchmarks/bench_demo_step.py --stages 2 --steps 12 --paths before after after-bf16

A timed step is a whole ``Trainer`` step as the demo runs it (``finedefics demo`` -> ``train_phase`` ->
``run_stage`` -> ``FinedeficsTrainer``): fetching the rows, collating them, forward, losses, backward, gradient
clipping, AdamW, the scheduler and the logging bookkeeping. Every path trains its own copy of the demo's starting
model (the shipped base, unless ``--model``) on the demo's data (the default synthetic benchmark, generated into a
temporary folder unless ``--data``), with the demo's settings (``demo_training_config``) except what the path
changes:

- ``before``: the former build: bf16 autocast and activation checkpointing on (TRL's defaults, which the demo
  kept) and the collator without its caches (``cache=False``: every step decodes every image, renders every chat
  template and tokenises every text);
- ``after``: the new build, as ``finedefics demo`` trains its variants now: float32 (no bf16 autocast), no
  activation checkpointing, the collator's content-keyed caches. Float32 changes the losses in the fourth
  decimal, so this path is never checked for equal losses;
- ``after-bf16``: ``after`` under bf16 autocast (the caches and no checkpointing only: exactly the former losses);
- ``after-cache-only``: the former settings with the caches only (to tell the changes apart).

The paths run in one process, each in its own thread under ``Trainer.train()`` for the whole schedule, taking
turns step by step (``before``, ``after``, ..., then ``before`` again), so the caches are as warm as in a real run
and load from other processes hits every path alike. The first ``--warmup`` steps of each path are not timed.
Each step's loss is recorded: the paths that claim the demo's behaviour must give exactly the ``before`` losses,
or the script stops with an error. Reported: median and mean ms per step, and ``before``'s median over each
path's (the speed-up).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# name: (collator caches, activation checkpointing, bf16 autocast, must give the `before` losses)
PATHS = {
    "before": (False, True, True, True),
    "after": (True, False, False, False),
    "after-bf16": (True, False, True, True),
    "after-cache-only": (True, True, True, True),
}
STAGE_NAMES = {1: "stage I", 2: "stage II"}


class Turns:
    """Round-robin turns between the paths' training threads: one step at a time, in a fixed order."""

    def __init__(self, names: list[str]):
        self.order = list(names)
        self.current = 0
        self.finished: set[str] = set()
        self.condition = threading.Condition()

    def wait(self, name: str) -> None:
        with self.condition:
            self.condition.wait_for(lambda: self.order[self.current] == name)

    def pass_on(self, name: str, finished: bool = False) -> None:
        with self.condition:
            if finished:
                self.finished.add(name)
            for offset in range(1, len(self.order) + 1):
                candidate = (self.current + offset) % len(self.order)
                if self.order[candidate] not in self.finished:
                    self.current = candidate
                    break
            self.condition.notify_all()


def step_timer(name: str, turns: Turns, times: list[float]):
    """A callback that waits for its path's turn before each step and records the step's wall time."""
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        start = None

        def on_train_begin(self, args, state, control, **kwargs):
            turns.wait(name)
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            times.append(time.perf_counter() - self.start)
            print(f"stage {args.stage}, {name}, step {state.global_step}: {1000 * times[-1]:.0f} ms", file=sys.stderr,
                  flush=True)
            turns.pass_on(name)
            turns.wait(name)
            self.start = time.perf_counter()

        def on_train_end(self, args, state, control, **kwargs):
            turns.pass_on(name, finished=True)

    return StepTimer()


def build_trainer(path: str, stage: int, model_dir: Path, data_dir: Path, output_dir: Path, steps: int, callback,
                  losses: list[float]):
    """A demo phase's trainer (``train_phase``'s settings), changed as ``path`` says, recording each step's loss."""
    from transformers import TrainerCallback

    from finedefics_training.demo.plan import default_plan
    from finedefics_training.demo.train import demo_model_arguments, demo_training_config
    from finedefics_training.recipe import (
        DataArguments,
        load_model_and_processor,
        load_training_dataset,
        replace_progress_display,
        with_data_noun,
    )
    from finedefics_training.trainer import FinedeficsTrainer

    cache, checkpointing, bf16, _ = PATHS[path]
    plan = default_plan()
    args = demo_training_config(output_dir, plan, stage=stage, steps=steps, learning_rate=plan.learning_rate, seed=0,
                                activation_checkpointing=checkpointing, bf16=bf16, save_strategy="no",
                                disable_tqdm=True)
    data_args = DataArguments(dataset_dir=str(data_dir))
    args = with_data_noun(args, data_args)
    model, processor = load_model_and_processor(demo_model_arguments(model_dir, plan), args)
    trainer = FinedeficsTrainer(model=model, args=args, train_dataset=load_training_dataset(data_args),
                                processing_class=processor, callbacks=[callback])
    replace_progress_display(trainer, TrainerCallback())  # no progress bar, no printed logs
    trainer.data_collator = replace(trainer.data_collator, cache=cache)
    compute_loss = trainer.compute_loss

    def recording_compute_loss(model, inputs, return_outputs=False, num_items_in_batch=None):
        result = compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)
        losses.append((result[0] if return_outputs else result).detach().float().item())
        return result

    trainer.compute_loss = recording_compute_loss
    return trainer


def run_stage_paths(stage: int, paths: list[str], model_dir: Path, data_dir: Path, work_dir: Path, steps: int,
                    warmup: int) -> dict:
    turns = Turns(paths)
    times = {path: [] for path in paths}
    losses = {path: [] for path in paths}
    trainers = {path: build_trainer(path, stage, model_dir, data_dir, work_dir / f"stage{stage}-{path}",
                                    warmup + steps, step_timer(path, turns, times[path]), losses[path])
                for path in paths}
    errors = {}

    def train(path):
        try:
            trainers[path].train()
        except BaseException as error:  # noqa: BLE001 - reported below; the other paths must not wait forever
            errors[path] = error
            turns.pass_on(path, finished=True)

    threads = [threading.Thread(target=train, args=(path,), name=path) for path in paths]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        path, error = next(iter(errors.items()))
        raise RuntimeError(f"stage {stage}, path {path}: training failed") from error
    result = {}
    for path in paths:
        timed = [1000 * t for t in times[path][warmup:]]
        result[path] = {"median_ms": statistics.median(timed), "mean_ms": statistics.fmean(timed),
                        "steps_timed": len(timed), "ms": [round(t, 1) for t in timed], "losses": losses[path]}
    reference = losses["before"] if "before" in losses else None
    for path in paths:
        same = PATHS[path][3]
        if reference is not None and path != "before":
            differences = [abs(a - b) for a, b in zip(losses[path], reference)]
            result[path]["max_loss_difference_to_before"] = max(differences) if differences else None
            if same and losses[path] != reference:
                raise SystemExit(f"stage {stage}: path {path} gave other losses than before "
                                 f"({losses[path][:4]} vs {reference[:4]}): it does not keep the demo's behaviour")
    if "before" in result:
        for path in paths:
            result[path]["speedup"] = result["before"]["median_ms"] / result[path]["median_ms"]
    return result


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stages", type=int, nargs="+", default=[1, 2], choices=[1, 2])
    parser.add_argument("--paths", nargs="+", default=["before", "after"], choices=list(PATHS))
    parser.add_argument("--steps", type=int, default=10, help="timed steps per path and stage")
    parser.add_argument("--warmup", type=int, default=2, help="untimed first steps per path and stage")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--model", type=Path, default=None, help="starting model (default: the shipped demo base)")
    parser.add_argument("--data", type=Path, default=None,
                        help="a `finedefics data` folder (default: the demo's synthetic benchmark, generated)")
    parser.add_argument("--output", type=Path, default=None, help="write the results as JSON")
    options = parser.parse_args(argv)

    import torch

    torch.set_num_threads(options.threads)
    from transformers.utils import logging as hf_logging

    from finedefics_training.demo.shipped_base import shipped_base_dir

    hf_logging.set_verbosity_error()
    model_dir = options.model or shipped_base_dir()
    with tempfile.TemporaryDirectory(prefix="bench-demo-step-") as temporary:
        work_dir = Path(temporary)
        data_dir = options.data
        if data_dir is None:
            from finedefics_data.synth import SynthConfig, generate_benchmark

            data_dir = generate_benchmark(work_dir / "data", SynthConfig(**default_synth()), progress=False)
        results = {"machine": machine(), "threads": options.threads, "steps": options.steps,
                   "warmup": options.warmup, "model": str(model_dir), "stages": {}}
        for stage in options.stages:
            results["stages"][STAGE_NAMES[stage]] = run_stage_paths(stage, options.paths, model_dir, data_dir,
                                                                    work_dir, options.steps, options.warmup)
    print_table(results)
    if options.output is not None:
        options.output.write_text(json.dumps(results, indent=1))
    return results


def default_synth() -> dict:
    from finedefics_training.demo.plan import default_plan

    return dict(default_plan().synth)


def machine() -> dict:
    import platform

    import torch

    return {"cpus": os.cpu_count(), "torch": torch.__version__,
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "load_average_at_end": os.getloadavg(), "python": platform.python_version()}


def print_table(results: dict) -> None:
    print(f"\n{results['steps']} timed steps per path and stage after {results['warmup']} untimed; torch threads "
          f"{results['threads']}; load average at the end {results['machine']['load_average_at_end']}")
    print("| stage | path | ms/step (median) | ms/step (mean) | speed-up (before / path, medians) |")
    print("|---|---|---|---|---|")
    for stage, paths in results["stages"].items():
        for path, values in paths.items():
            speedup = values.get("speedup")
            print(f"| {stage} | {path} | {values['median_ms']:.0f} | {values['mean_ms']:.0f} | "
                  f"{'' if speedup is None else f'{speedup:.2f}x'} |")
    for stage, paths in results["stages"].items():
        for path, values in paths.items():
            if "max_loss_difference_to_before" in values:
                print(f"{stage}, {path}: largest per-step loss difference to before "
                      f"{values['max_loss_difference_to_before']:.3g}")


if __name__ == "__main__":
    main(sys.argv[1:])
