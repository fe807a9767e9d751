"""The CUDA paths the CPU test suite cannot reach, in one run of a few minutes on a machine with an NVIDIA GPU.

    python benchmarks/gpu_check.py                  # every check, one summary line each at the end
    python benchmarks/gpu_check.py --only qlora bf16

Each check builds what it needs from configs (a small synthetic benchmark, a tiny model): nothing is
downloaded. Checks:

- ``environment``: torch, CUDA, the GPU, bitsandbytes;
- ``qlora``: stage I with bitsandbytes' 4-bit CUDA kernels (nf4, bf16 compute), then the dequantised
  merge; the loss must be finite and fall, and the merged checkpoint must load and classify;
- ``bf16``: LoRA stage I then stage II in bfloat16 (``run_two_stage``); the temperatures must stay
  float32 and move in stage I;
- ``memory``: the CUDA allocator's peak over one stage I step of the tiny model against the dry run's
  estimate for the same batch (``benchmarks/bench_dry_run.py``);
- ``ddp``: two processes on two GPUs through torchrun (skipped with one GPU).

It exits 1 if a check failed. ``--device cpu`` runs the same code on CPU (QLoRA through bitsandbytes'
CPU backend) to check the script itself where no GPU is available.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

CHECKS = ("environment", "qlora", "bf16", "memory", "ddp")
HERE = Path(__file__).resolve().parent


def _bench(name: str):
    spec = importlib.util.spec_from_file_location(name, HERE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def prepare(folder: Path) -> tuple[Path, Path]:
    """A small synthetic benchmark (saved as a training dataset) and a micro model whose tokenizer knows it."""
    from finedefics_data.synth import SynthConfig, generate_benchmark, text_corpus
    from modeling_finedefics.tiny import build_tiny_model, build_tiny_processor, build_tiny_tokenizer

    data_dir = generate_benchmark(folder / "synth",
                                  SynthConfig(num_genera=2, species_per_genus=3, train_per_category=8,
                                  rare_train_per_category=3, test_per_category=2), progress=False)
    processor = build_tiny_processor(build_tiny_tokenizer(text_corpus(data_dir)))
    model_dir = folder / "micro"
    build_tiny_model(processor, preset="micro").save_pretrained(model_dir)
    processor.save_pretrained(model_dir)
    return data_dir, model_dir


def _arguments(model_dir: Path, data_dir: Path, output_dir: Path, device: str, **fields):
    from finedefics_training.config import FinedeficsTrainingConfig
    from finedefics_training.recipe import DataArguments, ModelArguments

    tuning = fields.pop("tuning")
    dtype = fields.pop("torch_dtype", "bfloat16")
    model_args = ModelArguments(model_name_or_path=str(model_dir), tuning=tuning, torch_dtype=dtype)
    defaults = dict(output_dir=str(output_dir), per_device_train_batch_size=8, learning_rate=2e-3, logging_steps=1,
                    save_strategy="no", report_to=[], seed=0, num_negatives=2, dataloader_num_workers=0,
                    disable_tqdm=True, use_cpu=device == "cpu", bf16=device != "cpu")
    return model_args, DataArguments(dataset_dir=str(data_dir)), FinedeficsTrainingConfig(**{**defaults, **fields})


def _losses(output_dir: Path) -> list[float]:
    history = json.loads((output_dir / "log_history.json").read_text())
    return [entry["loss"] for entry in history if "loss" in entry]


def _classifies(folder: Path) -> str:
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model = AutoModelForImageTextToText.from_pretrained(folder, trust_remote_code=True)
    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    result = model.classify([Image.new("RGB", (64, 64), "red")], ["a", "b"], processor)
    return result.labels[0][0]


def check_environment(args, folder) -> str:
    import torch

    parts = [f"torch {torch.__version__}", f"CUDA {torch.version.cuda}"]
    if torch.cuda.is_available():
        parts += [torch.cuda.get_device_name(0), f"{torch.cuda.device_count()} GPU(s)"]
    elif args.device != "cpu":
        raise RuntimeError("torch.cuda.is_available() is False: this torch build or machine has no CUDA")
    import bitsandbytes

    return ", ".join(parts + [f"bitsandbytes {bitsandbytes.__version__}"])


def check_qlora(args, folder) -> str:
    from finedefics_training.recipe import run_stage

    data_dir, model_dir = args.prepared
    steps = 20 if args.device != "cpu" else 4
    final = run_stage(*_arguments(model_dir, data_dir, folder / "qlora", args.device, tuning="qlora", stage=1,
                                  max_steps=steps))
    losses = _losses(folder / "qlora")
    if not all(map(_finite, losses)):
        raise AssertionError(f"non-finite loss: {losses}")
    if args.device != "cpu" and not sum(losses[-3:]) < sum(losses[:3]):
        raise AssertionError(f"loss did not fall over {steps} steps: {losses[:3]} -> {losses[-3:]}")
    return (f"{steps} steps, loss {losses[0]:.3f} -> {losses[-1]:.3f}; merged checkpoint classifies "
            f"({_classifies(final)!r})")


def check_bf16(args, folder) -> str:
    import torch
    from safetensors.torch import load_file

    from finedefics_training.recipe import run_two_stage

    data_dir, model_dir = args.prepared
    model_args, data_args, training_args = _arguments(model_dir, data_dir, folder / "bf16", args.device, tuning="lora",
                                                      max_steps=10, torch_dtype="bfloat16")
    stage1, stage2 = run_two_stage(model_args, data_args, training_args)
    before = load_file(model_dir / "model.safetensors")["temperatures.object_attribute"]
    after = load_file(stage1 / "model.safetensors")["temperatures.object_attribute"]
    if after.dtype != torch.float32 or torch.equal(before.float(), after.float()):
        raise AssertionError(f"temperature {before.item():.6f} -> {after.item():.6f} ({after.dtype}): not trained in "
                             "float32")
    return (f"stage I loss {_losses(stage1.parent)[-1]:.3f}, stage II loss {_losses(stage2.parent)[-1]:.3f}; "
            f"log-scale {before.item():.5f} -> {after.item():.5f} (float32)")


def check_memory(args, folder) -> str:
    if args.device == "cpu":
        return "skipped: the CUDA allocator's peak needs a GPU"
    bench = _bench("bench_dry_run")
    options = bench.argparse.Namespace(preset="tiny", tuning="full", batch_size=16, num_negatives=3, seed=0)
    result = bench.measure(options, folder / "memory", device="cuda")
    estimate = sum(result["estimated"].values())
    return (f"stage I step (tiny, batch 16): CUDA peak {result['cuda_peak'] / 2**20:.1f} MiB, dry-run estimate "
            f"{estimate / 2**20:.1f} MiB (ratio {estimate / result['cuda_peak']:.2f})")


def check_ddp(args, folder) -> str:
    import torch
    import yaml

    if args.device == "cpu" or torch.cuda.device_count() < 2:
        return "skipped: needs two GPUs"
    data_dir, model_dir = args.prepared
    recipe = folder / "ddp.yaml"
    recipe.write_text(yaml.safe_dump(dict(model_name_or_path=str(model_dir), dataset_dir=str(data_dir),
                                          output_dir=str(folder / "ddp"), tuning="lora", max_steps=5, bf16=True,
                                          per_device_train_batch_size=4, report_to="none", save_strategy="no")))
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "-m", "finedefics_cli",
               "train", "--config", str(recipe)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        raise AssertionError(result.stderr[-2000:])
    return f"two processes, final checkpoint classifies ({_classifies(folder / 'ddp' / 'final')!r})"


def _finite(value: float) -> bool:
    return value == value and abs(value) != float("inf")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=CHECKS, default=list(CHECKS))
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HOME", tempfile.mkdtemp(prefix="finedefics-gpu-check-hf-home-"))
    summary, failed = [], False
    with tempfile.TemporaryDirectory(prefix="finedefics-gpu-check-") as folder:
        folder = Path(folder)
        args.prepared = prepare(folder)
        for name in args.only:
            start = time.perf_counter()
            try:
                detail, status = globals()[f"check_{name}"](args, folder), "ok"
            except Exception as error:  # a failed check is reported and the others still run
                traceback.print_exc()
                detail, status, failed = f"{type(error).__name__}: {str(error)[:300]}", "FAILED", True
            summary.append(f"gpu-check {name:<12} {status:<6} ({time.perf_counter() - start:5.1f} s) {detail}")
    print("\n".join(summary))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
