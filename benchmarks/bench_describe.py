"""Throughput of `finedefics data describe` at tiny size: batched vs one question at a time, and a cached rerun.

    python benchmarks/bench_describe.py --images 24 --batch-size 8

Writes a labelled image folder (four categories of drawn vehicles, 64x48 px) and describes it with the shipped
demo base (``--vqa-model`` for another) and three attributes, the template summary, on this machine's CPU:

1. ``--batch-size 1``: every question asked alone (a fresh output folder);
2. ``--batch-size B``: B questions per ``generate`` call (a fresh output folder);
3. step 2's command again with ``--resume``: every answer comes from the cache.

It prints each run's images per second of the asking phase (``asking_seconds`` in describe_report.json: the
model's loading included, as a user waits for it) and of the whole command, and the ratios. Targets: batched
>= 3x one at a time (asking phase); the cached rerun >= 10x faster than the first batched run (whole command).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
COLOURS = {"Halden Rook": "red", "Mirel Vane": "blue", "Corvel Dart": "green", "Tarrow Spur": "orange"}
ATTRIBUTES = ["body colour", "wheels", "stripe"]


def write_images(root: Path, count: int) -> Path:
    """``count`` images spread over the categories, each a little different (no two share their bytes)."""
    from PIL import Image, ImageDraw

    for index in range(count):
        category, colour = list(COLOURS.items())[index % len(COLOURS)]
        folder = root / category
        folder.mkdir(parents=True, exist_ok=True)
        image = Image.new("RGB", (64, 48), "white")
        draw = ImageDraw.Draw(image)
        shift = index // len(COLOURS)
        draw.rectangle([4 + shift % 8, 14, 60 - shift % 5, 36], fill=colour)
        draw.rectangle([14, 16 + shift % 4, 46, 22 + shift % 4], fill="black")
        image.save(folder / f"{index}.png")
    return root


def describe(images: Path, output: Path, vqa_model: str, batch_size: int, resume: bool = False) -> dict:
    from finedefics_data.describe_run import DescribeSettings, describe_folder
    from finedefics_data.prompts import ObjectNoun

    settings = DescribeSettings(vqa_model=vqa_model, attributes=ATTRIBUTES, noun=ObjectNoun.of("vehicle"),
                                batch_size=batch_size, progress=False)
    started = time.perf_counter()
    report = describe_folder(images, output, settings, resume=resume)
    report["wall_seconds"] = time.perf_counter() - started
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--vqa-model", default=str(REPO / "training" / "demo_base"))
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--output", help="also write the figures to this JSON file")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as temporary:
        root = Path(temporary)
        images = write_images(root / "images", args.images)
        # Untimed: the first imports and file reads would be charged to whichever run came first.
        describe(write_images(root / "warm-up-images", len(COLOURS)), root / "warm-up", args.vqa_model, 2)
        runs = {"one_at_a_time": describe(images, root / "single", args.vqa_model, 1),
                "batched": describe(images, root / "batched", args.vqa_model, args.batch_size)}
        runs["cached_rerun"] = describe(images, root / "batched", args.vqa_model, args.batch_size, resume=True)
    figures = {name: {"asking_images_per_second": round(args.images / run["asking_seconds"], 3),
                      "images_per_second": round(args.images / run["wall_seconds"], 3),
                      "wall_seconds": round(run["wall_seconds"], 3), "answers": run["answers"]}
               for name, run in runs.items()}
    figures["batched_speed_up"] = round(runs["one_at_a_time"]["asking_seconds"] / runs["batched"]["asking_seconds"], 2)
    figures["cached_rerun_speed_up"] = round(runs["batched"]["wall_seconds"] / runs["cached_rerun"]["wall_seconds"], 2)
    figures["settings"] = {"images": args.images, "batch_size": args.batch_size, "attributes": ATTRIBUTES,
                           "vqa_model": args.vqa_model, "threads": args.threads, "device": "cpu"}
    print(json.dumps(figures, indent=1))
    if args.output:
        Path(args.output).write_text(json.dumps(figures, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
