"""A stage I step with the vision tower frozen: transformers' input-grad hooks vs Finedefics' own.

    python benchmarks/bench_frozen_vision.py --threads 2
    python benchmarks/bench_frozen_vision.py --preset tiny --batch-size 16 --repeats 20 --output frozen.json

PEFT (LoRA, QLoRA) and gradient checkpointing call ``model.enable_input_require_grads()``.
transformers' version hooks every input embedding of the model, the vision tower's patch embeddings
included, so a frozen tower still joins the autograd graph: its activations are kept and its layers
are back-propagated, for no parameter. ``FinedeficsForConditionalGeneration.enable_input_require_grads``
hooks the vision tower only while some vision parameter trains.

One run, one tiny model (random weights, CPU, float32), LoRA as in the recipes (vision tower not
targeted), activation checkpointing on (``--no-activation-checkpointing``: off), and one stage I batch
(LM pass + batched contrastive pass, as ``bench_train_step.py`` builds it). Two copies of the same
model differ only in which ``enable_input_require_grads`` ran. Measured per variant:

- bytes saved for backward in one step (every tensor autograd keeps, counted through
  ``torch.autograd.graph.saved_tensors_hooks``): the activation memory the graph holds at its peak;
- whether the vision tower's output is in the graph;
- wall time of a step (zero_grad + forward + losses + backward + AdamW step), medians over
  ``--repeats`` round-robin rounds after ``--warmup`` steps, order alternating each round.

The first step of both variants must give the same loss (the hooks change the graph, not the values).
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import os
import statistics
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

VARIANTS = ("transformers' hooks", "Finedefics' hooks")
STAGE_ONE = "stage I (batched)"


def _train_step_module():
    """``bench_train_step.py`` beside this file: its batch, stage I losses and timed step are reused."""
    spec = importlib.util.spec_from_file_location("bench_train_step", Path(__file__).with_name("bench_train_step.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def prepare(args, bench):
    import torch
    from transformers import PreTrainedModel

    from finedefics_training.collator import FinedeficsDataCollator
    from finedefics_training.config import FinedeficsTrainingConfig
    from finedefics_training.losses import ContrastiveTexts
    from finedefics_training.recipe import ModelArguments, apply_lora
    from modeling_finedefics.tiny import build_tiny_model

    with tempfile.TemporaryDirectory(prefix="finedefics-bench-frozen-") as folder:
        processor, examples = bench.build_batch(Path(folder), args.batch_size, args.seed)
        collated = FinedeficsDataCollator(processor, stage=1, num_negatives=args.num_negatives)(examples)
    batch = {"lm": collated, "contrastive": ContrastiveTexts.pop_from(collated)}

    base = build_tiny_model(processor, preset=args.preset, seed=args.seed)
    training_args = FinedeficsTrainingConfig(output_dir="unused", use_cpu=True, bf16=False, report_to=[])
    states = {}
    for variant in VARIANTS:
        model = copy.deepcopy(base)  # before any hook: a deep copy keeps hooks its handles cannot remove
        if args.activation_checkpointing:
            model.activation_checkpointing_enable()
        model = apply_lora(model, ModelArguments(tuning="lora"), training_args).train()
        core = model.get_base_model()
        core.disable_input_require_grads()  # checkpointing and PEFT already called the model's own version
        if variant == VARIANTS[0]:
            PreTrainedModel.enable_input_require_grads(core)
        else:
            core.enable_input_require_grads()
        trainable = [p for p in model.parameters() if p.requires_grad]
        states[variant] = {"variant": STAGE_ONE, "model": model,
                           "optimizer": torch.optim.AdamW(trainable, lr=args.learning_rate)}
    return states, batch


def saved_for_backward(state: dict, batch: dict, criterion, bench) -> dict:
    """One step with autograd's saved tensors counted, and whether the vision tower's output is in the graph."""
    import torch

    saved = {"bytes": 0, "tensors": 0}

    def pack(tensor):
        saved["bytes"] += tensor.numel() * tensor.element_size()
        saved["tensors"] += 1
        return tensor

    vision = state["model"].get_base_model().model.vision_model
    in_graph = []
    hooks = [vision.register_forward_hook(lambda m, i, out: in_graph.append(out.last_hidden_state.requires_grad))]
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            _, (lm_loss, contrastive_loss) = bench.train_step(state, batch, criterion)
    finally:
        for hook in hooks:
            hook.remove()
    return {**saved, "vision_output_in_graph": any(in_graph), "loss": (lm_loss + contrastive_loss).item()}


def time_rounds(states: dict, batch: dict, criterion, rounds: int, bench) -> dict:
    times = {variant: [] for variant in VARIANTS}
    for index in range(rounds):
        for variant in VARIANTS[index % 2:] + VARIANTS[:index % 2]:
            elapsed, _ = bench.train_step(states[variant], batch, criterion)
            times[variant].append(elapsed)
    return times


def markdown(result: dict) -> str:
    lines = ["| enable_input_require_grads | vision output in graph | saved for backward | ms/step (median) |",
             "|---|---|---|---|"]
    for variant, row in result["variants"].items():
        lines.append(f"| {variant} | {'yes' if row['vision_output_in_graph'] else 'no'} | "
                     f"{row['saved_bytes'] / 2**20:.1f} MiB ({row['saved_tensors']} tensors) | "
                     f"{row['median_ms']:.1f} |")
    old, new = (result["variants"][variant] for variant in VARIANTS)
    lines.append("")
    lines.append(f"Finedefics / transformers: saved for backward {new['saved_bytes'] / old['saved_bytes']:.2f}x, "
                 f"step time {new['median_ms'] / old['median_ms']:.2f}x. First-step loss {old['loss']:.6f} vs "
                 f"{new['loss']:.6f}. Preset {result['preset']}, batch {result['batch_size']}, LoRA, activation "
                 f"checkpointing {'on' if result['activation_checkpointing'] else 'off'}, torch threads "
                 f"{result['threads']}, {result['repeats']} timed rounds.")
    return "\n".join(lines)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny", choices=["micro", "tiny"])
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--num-negatives", type=int, default=3)
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument("--no-activation-checkpointing", dest="activation_checkpointing", action="store_false",
                        help="without activation checkpointing (PEFT still calls enable_input_require_grads)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default=None, help="also write the numbers to this JSON file")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HOME", tempfile.mkdtemp(prefix="finedefics-bench-hf-home-"))

    import torch

    from finedefics_training.losses import FinedeficsContrastiveLoss

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    bench = _train_step_module()
    states, batch = prepare(args, bench)
    criterion = FinedeficsContrastiveLoss()
    first = {variant: saved_for_backward(states[variant], batch, criterion, bench) for variant in VARIANTS}
    losses = [first[variant]["loss"] for variant in VARIANTS]
    if abs(losses[0] - losses[1]) > 1e-5:  # not `assert`: must also hold under python -O
        raise AssertionError(f"first-step losses differ ({losses}): the hooks must not change the values")
    time_rounds(states, batch, criterion, args.warmup, bench)
    times = time_rounds(states, batch, criterion, args.repeats, bench)
    result = {"preset": args.preset, "batch_size": args.batch_size, "repeats": args.repeats,
              "activation_checkpointing": args.activation_checkpointing,
              "threads": torch.get_num_threads(), "torch": torch.__version__,
              "variants": {variant: {"saved_bytes": first[variant]["bytes"],
                                     "saved_tensors": first[variant]["tensors"],
                                     "vision_output_in_graph": first[variant]["vision_output_in_graph"],
                                     "loss": first[variant]["loss"],
                                     "median_ms": 1000 * statistics.median(times[variant])}
                           for variant in VARIANTS}}
    result["markdown"] = markdown(result)
    print(result["markdown"])
    if args.output:
        Path(args.output).write_text(json.dumps(result, indent=2), encoding="utf-8")
    return result


if __name__ == "__main__":
    main()
