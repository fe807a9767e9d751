"""`finedefics eval` and lmms-eval with the Finedefics plugin on the same checkpoint and benchmark: both tables and
how many per-image predictions agree (the README's "Evaluating in lmms-eval" table).

    python benchmarks/lmms_eval_parity.py --model training/demo_base --benchmark runs/synth --output runs/parity
    python benchmarks/lmms_eval_parity.py ... --compare-only   # the two output folders exist: compare them

Runs, in ``--output``, ``finedefics eval --mode generate likelihood --seed S`` (into ``finedefics-eval/``) and the
README's lmms-eval command on ``finedefics_data,finedefics_data_likelihood`` with ``FINEDEFICS_SEED=S`` and
``--batch_size 8`` (into ``lmms-eval/``), timing each, then prints the markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

TASKS = {"generate": "finedefics_data", "likelihood": "finedefics_data_likelihood"}
FIELDS = ("image", "predicted", "predicted_raw", "correct", "options")


def run(command: list[str], env: dict, log: Path) -> float:
    start = time.perf_counter()
    with open(log, "w", encoding="utf-8") as out:
        subprocess.run(command, env=env, stdout=out, stderr=subprocess.STDOUT, check=True)
    return time.perf_counter() - start


def run_both(args, output: Path) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    bin_dir = Path(sys.executable).parent
    seconds = {"finedefics eval": run(
        [str(bin_dir / "finedefics"), "eval", "--model", args.model, "--benchmark", args.benchmark, "--mode",
         "generate", "likelihood", "--seed", str(args.seed), "--output-dir", str(output / "finedefics-eval"),
         "--no-plots", "--no-progress"], env, output / "finedefics-eval.log")}
    tasks = subprocess.run([sys.executable, "-m", "finedefics_eval.lmms_eval_plugin"], capture_output=True, text=True,
                           check=True).stdout.strip()
    seconds["lmms-eval"] = run(
        [str(bin_dir / "lmms-eval"), "--model", "finedefics", "--model_args", f"pretrained={args.model}", "--tasks",
         ",".join(TASKS.values()), "--include_path", tasks, "--batch_size", "8", "--output_path",
         str(output / "lmms-eval"), "--log_samples"],
        {**env, "FINEDEFICS_BENCHMARK": args.benchmark, "FINEDEFICS_SEED": str(args.seed)}, output / "lmms-eval.log")
    return seconds


def compare(output: Path, seconds: dict | None) -> str:
    report = json.loads((output / "finedefics-eval" / "report.json").read_text(encoding="utf-8"))
    (results_file,) = sorted((output / "lmms-eval").rglob("*_results.json"))[-1:]
    results = json.loads(results_file.read_text(encoding="utf-8"))["results"]
    lines = ["| mode | `finedefics eval` accuracy | lmms-eval accuracy | images | same prediction |",
             "|---|---|---|---|---|"]
    for mode, task in TASKS.items():
        theirs = json.loads((output / "finedefics-eval" / f"predictions-{mode}.json").read_text())["predictions"]
        (samples_file,) = sorted(results_file.parent.glob(f"*_samples_{task}.jsonl"))[-1:]
        samples = [json.loads(line) for line in samples_file.read_text(encoding="utf-8").splitlines() if line]
        ours = [s["accuracy"] for s in sorted(samples, key=lambda s: s["doc_id"]) if "accuracy" in s]
        same = sum(all(a[k] == b[k] for k in FIELDS) for a, b in zip(ours, theirs)) if len(ours) == len(theirs) else 0
        lines.append(f"| {mode} | {100 * report['modes'][mode]['accuracy']:.2f} | "
                     f"{100 * results[task]['accuracy,none']:.2f} | {len(theirs)} | {same} of {len(theirs)} |")
    if seconds:
        lines.append("")
        lines.append("wall time: " + ", ".join(f"{name} {value:.0f} s" for name, value in seconds.items()))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--benchmark", required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--compare-only", action="store_true")
    args = parser.parse_args()
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    seconds = None if args.compare_only else run_both(args, output)
    print(compare(output, seconds))


if __name__ == "__main__":
    main()
