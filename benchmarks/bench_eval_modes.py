"""Throughput of the three scoring modes on the same tiny model and the same images, in one run.

    python benchmarks/bench_eval_modes.py --images 96 --batch-size 1 8

Builds a tiny Finedefics model (random weights, CPU) and a synthetic 4-way benchmark of flat-colour
64 px images, warms every mode up on one batch, then, per batch size, runs ``evaluate_model`` once
with ``generate`` (FOCI's max_new_tokens=10), ``likelihood`` and ``embedding`` and prints images per
second (steady state, see ``evaluate_model``) and the ratios to ``generate``. Targets: embedding
>= 10x generate, likelihood >= 2x generate.

It then times the three modes scored together (one ``evaluate_model`` call: each batch's images encoded
once, the letter likelihood read from generate's prefill) against the same three modes scored each on
its own (three calls: nothing shared, which is what a multi-mode run cost before sharing), alternating
the two ``--repeats`` times and keeping each one's fastest, and prints the ratio ``sharing_speed_up``.
A mode's ``images_per_second`` is the same either way: it is charged all shared work it used.

A random model never emits its end-of-turn token, so ``generate`` always decodes all 10 tokens:
FOCI's budget, and the worst case for a trained model (which usually stops after "B<end_of_utterance>").
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")

CATEGORIES = [f"{genus} {species}" for genus in ("Velmoran", "Corvel", "Ashcombe", "Mirel", "Tarrow")
              for species in ("Thistlewing", "Tit", "Reedhopper", "Finch")]
COLOURS = ["red", "green", "blue", "yellow", "white", "black", "orange", "purple", "pink", "brown",
           "grey", "cyan", "magenta", "olive", "navy", "teal", "maroon", "lime", "silver", "gold"]


def build_benchmark(num_images: int):
    """An in-memory 4-way benchmark: one flat colour per category, the next three categories as options."""
    from PIL import Image

    from finedefics_data.prompts import ObjectNoun, open_set_question
    from finedefics_eval.benchmarks import Benchmark
    from finedefics_eval.foci import OptionExample, foci_query

    images = {}
    examples = []
    for index in range(num_images):
        category = index % len(CATEGORIES)
        options = [CATEGORIES[(category + k) % len(CATEGORIES)] for k in range(4)]
        examples.append(OptionExample(str(index), f"synthetic/{index}.png", options[0], options))
        images[str(index)] = Image.new("RGB", (64, 64), COLOURS[category])
    return Benchmark(name="throughput", split="test", examples=examples, categories=list(CATEGORIES),
                     query=foci_query("birds"), open_set_question=open_set_question(ObjectNoun.of("bird")),
                     source="benchmarks/bench_eval_modes.py", image_getter=lambda example: images[example.example_id])


def measure(model, processor, benchmark, batch_size: int) -> dict:
    """Images per second of the three modes at ``batch_size`` (after one untimed warm-up batch per mode)."""
    from finedefics_eval.runner import evaluate_model

    modes = ("generate", "likelihood", "embedding")
    evaluate_model(model, processor, build_benchmark(batch_size), modes=modes, batch_size=batch_size,
                   progress=False, bootstrap_samples=0)
    report = evaluate_model(model, processor, benchmark, modes=modes, batch_size=batch_size, progress=True,
                            bootstrap_samples=0)
    speed = {mode: report["modes"][mode]["images_per_second"] for mode in modes}
    return {"batch_size": batch_size, "images_per_second": speed,
            "speed_up_over_generate": {mode: speed[mode] / speed["generate"] for mode in modes}}


def measure_sharing(model, processor, benchmark, batch_size: int, repeats: int) -> dict:
    """Wall seconds of the three modes together (shared work) and each alone (none shared), best of ``repeats``."""
    import time

    from finedefics_eval.runner import evaluate_model

    modes = ("generate", "likelihood", "embedding")
    options = dict(batch_size=batch_size, progress=False, bootstrap_samples=0)

    def timed(mode_groups) -> float:
        start = time.perf_counter()
        for group in mode_groups:
            evaluate_model(model, processor, benchmark, modes=group, **options)
        return time.perf_counter() - start

    together, alone = [], []
    for _ in range(repeats):  # alternated, so that both see the same machine load
        together.append(timed([modes]))
        alone.append(timed([(mode,) for mode in modes]))
    return {"modes": list(modes), "together_seconds": min(together), "alone_seconds": min(alone),
            "sharing_speed_up": min(alone) / min(together)}


def parse_overrides(pairs: list[str]) -> dict:
    """``["text_hidden=512", ...]`` -> ``{"text_hidden": 512, ...}``."""
    overrides = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        if not value.isdigit():
            raise ValueError(f"override {pair!r} must look like KEY=INTEGER")
        overrides[key] = int(value)
    return overrides


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--batch-size", type=int, nargs="+", default=[8], help="one or more batch sizes")
    parser.add_argument("--preset", default="tiny", choices=["micro", "tiny"])
    parser.add_argument("--override", nargs="*", default=[], metavar="KEY=INT",
                        help="model size overrides of the preset, e.g. text_hidden=512 text_layers=8")
    parser.add_argument("--repeats", type=int, default=3, help="timings of shared vs not shared (best kept)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--output", default=None, help="also write the numbers to this JSON file")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HOME", tempfile.mkdtemp(prefix="finedefics-bench-hf-home-"))

    import torch

    from modeling_finedefics.tiny import build_tiny_model, build_tiny_processor, build_tiny_tokenizer

    if args.threads:
        torch.set_num_threads(args.threads)
    processor = build_tiny_processor(build_tiny_tokenizer(CATEGORIES))
    model = build_tiny_model(processor, preset=args.preset, seed=0, **parse_overrides(args.override)).eval()
    benchmark = build_benchmark(args.images)
    result = {"preset": args.preset, "overrides": args.override,
              "parameters": sum(p.numel() for p in model.parameters()),
              "images": args.images, "threads": torch.get_num_threads(), "runs": []}
    for batch_size in args.batch_size:
        run = measure(model, processor, benchmark, batch_size)
        run["sharing"] = measure_sharing(model, processor, benchmark, batch_size, args.repeats)
        result["runs"].append(run)
    print(json.dumps(result, indent=2))
    if args.output:
        with open(args.output, "w", encoding="utf-8") as handle:
            json.dump(result, handle, indent=2)
    return result


if __name__ == "__main__":
    main()
