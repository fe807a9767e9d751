"""Images per second of `finedefics eval` in 1 process and data-parallel over 2 processes, side by side in one run.

    python benchmarks/bench_data_parallel_eval.py --images 64 --batch-size 8 --repeats 2

Builds a tiny Finedefics checkpoint (random weights, ``preset="tiny"``) and a FOCI-format option file of
``--images`` flat-colour 64 px images, then runs the real command on the CPU, alternating ``--repeats`` times:

- 1 process: ``python -m finedefics_cli eval ...`` with a thread per core (torch's default), and again with
  cores / N threads (on a machine whose cores are busy with other work, fewer threads can be faster);
- N processes: ``torchrun --nproc_per_node=N -m finedefics_cli eval ...`` (gloo), cores / N threads each.

Each run's throughput is the report's ``images_per_second`` of the mode (steady state: after each rank's first
batch; for a launch every rank's images over the slowest rank's seconds, ``finedefics_eval.runner``); the
command's wall seconds (start-up and model loading included) are printed beside it. The fastest of the repeats
is kept, and the script checks that the launch's predictions equal the single process's. ``speed_up`` is the
launch's images/s over the faster single-process setting's.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

COLOURS = ["red", "green", "blue", "yellow", "white", "black", "orange", "purple", "pink", "brown"]
LABELS = [f"{genus} {species}" for genus in ("Velmoran", "Corvel") for species in
          ("Thistlewing", "Tit", "Reedhopper", "Finch", "Warbler")]


def build(folder: Path, num_images: int) -> tuple[Path, Path]:
    """A tiny checkpoint and a 4-way option file of ``num_images`` images under ``folder``."""
    from PIL import Image

    from modeling_finedefics.tiny import build_tiny_model, build_tiny_processor, build_tiny_tokenizer

    processor = build_tiny_processor(build_tiny_tokenizer(LABELS + ["Which of these birds is shown in the image?"]))
    checkpoint = folder / "checkpoint"
    build_tiny_model(processor, preset="tiny", seed=0).save_pretrained(checkpoint)
    processor.save_pretrained(checkpoint)
    (folder / "images").mkdir()
    options: dict[str, list] = {}
    for index in range(num_images):
        label = index % len(LABELS)
        name = f"images/{index}.png"
        Image.new("RGB", (64, 64), COLOURS[label]).save(folder / name)
        shown = [LABELS[(label + k) % len(LABELS)] for k in range(4)]
        options.setdefault(LABELS[label], []).append({"image": name, "options": shown, "groundtruth": shown[0]})
    option_file = folder / "options.json"
    option_file.write_text(json.dumps(options), encoding="utf-8")
    return checkpoint, option_file


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_eval(processes: int, threads: int, checkpoint: Path, option_file: Path, output: Path, args) -> dict:
    """One `finedefics eval` run; its speed from report.json and its wall seconds."""
    arguments = ["-m", "finedefics_cli", "eval", "--model", str(checkpoint), "--benchmark", str(option_file),
                 "--mode", args.mode, "--batch-size", str(args.batch_size), "--output-dir", str(output),
                 "--bootstrap-samples", "0", "--no-plots", "--no-progress", "--device", "cpu"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(threads)}
    command = [sys.executable, *arguments]
    if processes > 1:
        command = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={processes}",
                   "--master_addr=127.0.0.1", f"--master_port={free_port()}", *arguments]
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
    report = json.loads((output / "report.json").read_text(encoding="utf-8"))
    predictions = json.loads((output / f"predictions-{args.mode}.json").read_text(encoding="utf-8"))["predictions"]
    return {"images_per_second": report["modes"][args.mode]["images_per_second"], "wall_seconds": wall,
            "processes": report["processes"], "predictions": predictions}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--mode", default="generate", choices=["generate", "likelihood", "embedding"])
    parser.add_argument("--processes", type=int, default=2, help="the launch's process count (default: 2)")
    parser.add_argument("--repeats", type=int, default=2, help="alternating runs of each; the fastest is kept")
    parser.add_argument("--output", help="also write the results to this JSON file")
    args = parser.parse_args()

    cores = os.cpu_count() or 1
    share = max(1, cores // args.processes)
    settings = list(dict.fromkeys([(1, cores), (1, share), (args.processes, share)]))  # (processes, threads each)
    with tempfile.TemporaryDirectory(prefix="bench-dp-eval-") as tmp:
        folder = Path(tmp)
        checkpoint, option_file = build(folder, args.images)
        runs: dict[tuple, list[dict]] = {setting: [] for setting in settings}
        for repeat in range(args.repeats):
            for processes, threads in settings:
                output = folder / f"out-{processes}x{threads}-{repeat}"
                run = run_eval(processes, threads, checkpoint, option_file, output, args)
                runs[(processes, threads)].append(run)
                print(f"repeat {repeat}, {processes} process(es) x {threads} thread(s): "
                      f"{run['images_per_second']:.1f} images/s, {run['wall_seconds']:.1f} s wall", flush=True)
    best = {setting: max(found, key=lambda run: run["images_per_second"]) for setting, found in runs.items()}
    launch = best[(args.processes, share)]
    single = max((run for (processes, _), run in best.items() if processes == 1),
                 key=lambda run: run["images_per_second"])
    if any(run["predictions"] != launch["predictions"] for run in best.values()):
        raise SystemExit("the launch's predictions differ from the single process's")
    results = {"cpu_count": cores, "images": args.images, "batch_size": args.batch_size, "mode": args.mode,
               "repeats": args.repeats,
               "runs": [{"processes": p, "threads_per_process": t, "images_per_second": run["images_per_second"],
                         "wall_seconds": run["wall_seconds"]} for (p, t), run in best.items()],
               "speed_up": launch["images_per_second"] / single["images_per_second"],
               "wall_speed_up": single["wall_seconds"] / launch["wall_seconds"], "predictions_identical": True}
    print(f"\n| processes x threads | images/s ({args.mode}, steady state) | wall s (whole command) |\n|---|---|---|")
    for (processes, threads), run in best.items():
        print(f"| {processes} x {threads} | {run['images_per_second']:.2f} | {run['wall_seconds']:.1f} |")
    print(f"\nspeed-up of {args.processes} processes over the faster single process: {results['speed_up']:.2f}x "
          f"images/s, {results['wall_speed_up']:.2f}x wall; predictions identical")
    if args.output:
        Path(args.output).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
