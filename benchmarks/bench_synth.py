"""Images per second of the synthetic benchmark generator on one CPU core, at the default size.

    python benchmarks/bench_synth.py            # default SynthConfig (64 px, 28 species)
    python benchmarks/bench_synth.py --repeats 5 --image-size 128

Two numbers, each the best of ``--repeats`` runs:
- draw: ``sample_image`` only (scene, bird, occlusion, noise, description) for every image of the
  default benchmark, in memory;
- end to end: ``generate_benchmark`` into a temporary folder (drawing, duplicate check, PNG
  encoding, file writes, metadata, categories, FOCI options, reference CSV, README).
Target: >= 500 images/s end to end.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path


def pin_to_one_core() -> str:
    """Run on a single core, so the number is per core whatever the machine."""
    if hasattr(os, "sched_setaffinity"):
        core = min(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {core})
        return f"core {core}"
    return "unpinned (no sched_setaffinity on this platform)"


def time_drawing(config) -> tuple[int, float]:
    from finedefics_data.synth import _split_counts, build_categories, sample_image

    categories = build_categories(config)
    start, count = time.perf_counter(), 0
    for category in categories:
        for split in ("train", "test"):
            for index in range(_split_counts(category, config)[split]):
                sample_image(category, split, index, config)
                count += 1
    return count, time.perf_counter() - start


def time_end_to_end(config) -> tuple[int, float]:
    from finedefics_data.synth import generate_benchmark, load_categories

    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        output = generate_benchmark(Path(folder) / "bench", config, progress=False)
        elapsed = time.perf_counter() - start
        count = sum(c["n_train"] + c["n_test"] for c in load_categories(output))
    return count, elapsed


def main() -> None:
    from finedefics_data.synth import SynthConfig

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="runs per measurement; the best is reported")
    parser.add_argument("--image-size", type=int, default=SynthConfig().image_size)
    args = parser.parse_args()
    where = pin_to_one_core()
    config = SynthConfig(image_size=args.image_size)
    for name, measure in (("draw", time_drawing), ("end to end", time_end_to_end)):
        runs = [measure(config) for _ in range(args.repeats)]
        count, best = min(runs, key=lambda run: run[1])
        print(f"{name:>10}: {count / best:7.0f} images/s ({count} images of {config.image_size} px in {best:.2f} s, "
              f"best of {args.repeats}, {where})")


if __name__ == "__main__":
    main()
