"""The dry run's memory estimate against a measured training step, on a tiny model on CPU.

    python benchmarks/bench_dry_run.py --threads 2
    python benchmarks/bench_dry_run.py --preset tiny --batch-size 16 --tuning lora --output dry_run.json

One run: a tiny model (random weights, float32) saved to a temporary folder, one stage I batch of
``--batch-size`` rows of a small synthetic benchmark (as ``bench_train_step.py`` builds it), and:

- the estimate: ``finedefics_training.dry_run.plan_stage`` for that folder and recipe, given the
  batch's real shape (rows, padded LM length, contrastive texts and their padded length);
- the measurement: the model's weights, the gradients and AdamW state after one real step
  (``model(..., contrastive_input_ids=...)`` + LM loss + ``FinedeficsContrastiveLoss``, backward,
  ``optimizer.step()``), and every tensor autograd kept for backward in that step (each storage once,
  parameters excluded), which is the activation memory held when backward starts.

Activation checkpointing is off here: with it on, what autograd keeps is spread over the backward
recomputation and a count of saved tensors is no longer a peak. The CUDA overhead the dry run adds
for a GPU is left out of the comparison.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

GIB = 2**30


def _train_step_module():
    spec = importlib.util.spec_from_file_location("bench_train_step", Path(__file__).with_name("bench_train_step.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def measure(args, folder: Path, device: str = "cpu") -> dict:
    import torch

    from finedefics_training.collator import FinedeficsDataCollator
    from finedefics_training.config import FinedeficsTrainingConfig
    from finedefics_training.dry_run import SavedTensorCounter, StepShape, plan_stage
    from finedefics_training.losses import ContrastiveTexts, FinedeficsContrastiveLoss
    from finedefics_training.recipe import ModelArguments, load_model_and_processor
    from finedefics_training.trainer import causal_lm_loss
    from modeling_finedefics.tiny import build_tiny_model

    processor, examples = _train_step_module().build_batch(folder, args.batch_size, args.seed)
    build_tiny_model(processor, preset=args.preset, seed=args.seed).save_pretrained(folder / "model")
    processor.save_pretrained(folder / "model")
    model_args = ModelArguments(model_name_or_path=str(folder / "model"), tuning=args.tuning, torch_dtype="float32")
    training_args = FinedeficsTrainingConfig(output_dir=str(folder / "run"), use_cpu=True, bf16=False, report_to=[],
                                             per_device_train_batch_size=args.batch_size, stage=1,
                                             num_negatives=args.num_negatives, activation_checkpointing=False)
    model, processor = load_model_and_processor(model_args, training_args)
    model.to(device).train()
    batch = FinedeficsDataCollator(processor, stage=1, num_negatives=args.num_negatives)(examples)
    batch = {key: value.to(device) if torch.is_tensor(value) else value for key, value in batch.items()}
    contrastive = ContrastiveTexts.pop_from(batch)

    config = model.get_base_model().config if hasattr(model, "get_base_model") else model.config
    sub_images = batch["pixel_values"].shape[1]
    texts, text_length = contrastive.contrastive_input_ids.shape
    shape = StepShape(rows=args.batch_size, sub_images=sub_images,
                      patches=(config.vision_config.image_size // config.vision_config.patch_size) ** 2,
                      image_tokens=processor.image_seq_len,
                      text_tokens=batch["input_ids"].shape[1] - sub_images * (processor.image_seq_len + 2),
                      contrastive_texts=texts / args.batch_size, contrastive_text_tokens=text_length)
    plan = plan_stage(model_args, training_args, shape=shape)

    parameters = [p for p in model.parameters()]
    optimizer = torch.optim.AdamW([p for p in parameters if p.requires_grad], lr=1e-4)
    criterion = FinedeficsContrastiveLoss()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    with SavedTensorCounter(parameters) as counter:
        outputs = model(**batch, use_cache=False, **contrastive.model_inputs())
        lm_loss, _ = causal_lm_loss(outputs.logits, batch["labels"])
        loss = lm_loss + criterion(contrastive.embed(outputs.image_embeds, outputs.text_embeds),
                                   outputs.logit_scales).loss
    loss.backward()
    optimizer.step()
    tensors = lambda items: sum(t.numel() * t.element_size() for t in items)  # noqa: E731
    measured = {
        "weights": tensors(p for n, p in model.named_parameters()),
        "gradients": tensors(p.grad for p in parameters if p.grad is not None),
        "optimizer state": tensors(v for state in optimizer.state.values() for key, v in state.items()
                                   if torch.is_tensor(v) and key != "step"),
        "activations": counter.bytes,
    }
    estimated = {name: plan.memory_gib[name] * GIB for name in ("weights", "gradients", "optimizer state")}
    estimated["activations"] = sum(value * GIB for name, value in plan.memory_gib.items()
                                   if name.endswith("activations") or name.startswith("logits"))
    result = {"measured": measured, "estimated": estimated, "shape": vars(shape)}
    if device.startswith("cuda"):
        result["cuda_peak"] = torch.cuda.max_memory_allocated()  # the allocator's peak over the whole step
    return result


def markdown(result: dict) -> str:
    lines = ["| | estimated (MiB) | measured (MiB) | estimate / measured |", "|---|---|---|---|"]
    for name in result["measured"]:
        estimate, measured = result["estimated"][name], result["measured"][name]
        lines.append(f"| {name} | {estimate / 2**20:.1f} | {measured / 2**20:.1f} | {estimate / measured:.2f} |")
    total_e, total_m = sum(result["estimated"].values()), sum(result["measured"].values())
    lines.append(f"| **total** | {total_e / 2**20:.1f} | {total_m / 2**20:.1f} | {total_e / total_m:.2f} |")
    lines.append("")
    lines.append(f"Preset {result['preset']}, {result['tuning']}, float32, batch {result['batch_size']}, stage I, "
                 "activation checkpointing off, CPU.")
    return "\n".join(lines)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny", choices=["micro", "tiny"])
    parser.add_argument("--tuning", default="full", choices=["full", "lora"])
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--num-negatives", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default=None, help="also write the numbers to this JSON file")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HOME", tempfile.mkdtemp(prefix="finedefics-bench-hf-home-"))

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    with tempfile.TemporaryDirectory(prefix="finedefics-bench-dry-run-") as folder:
        result = measure(args, Path(folder))
    result.update(preset=args.preset, tuning=args.tuning, batch_size=args.batch_size)
    result["ratio"] = sum(result["estimated"].values()) / sum(result["measured"].values())
    result["markdown"] = markdown(result)
    print(result["markdown"])
    if args.output:
        Path(args.output).write_text(json.dumps(result, indent=2), encoding="utf-8")
    return result


if __name__ == "__main__":
    main()
