"""Evaluate a Finedefics model on a benchmark in one or more scoring modes and build the report dict.

    from finedefics_eval import evaluate_model, load_benchmark, write_report

    benchmark = load_benchmark("bird-200", image_root="/data/CUB_200_2011")
    report = evaluate_model(model, processor, benchmark, modes=("generate", "likelihood", "embedding"), seed=0)
    write_report(report, "runs/eval/bird-200")

All modes see the same examples with the same seeded option order. The work on a batch's images is
done once and shared by the modes (see ``scoring.SharedBatch``): loading, the image processor, the
vision tower + connector, the tokenised prompts, and the prompt prefill that ``generate`` runs and the
letter likelihood reads (``generate`` runs first for that reason). Each mode's time is charged every
piece of shared work it used, whichever mode paid for it, so its time and speed are what a run of that
mode alone would take (up to noise); in a multi-mode run the modes' times therefore add up to more
than the run's wall time. ``seconds`` is a mode's whole time (set-up included: the embedding mode embeds
every category name first); ``images_per_second`` is the steady-state speed, measured after the first
batch (which pays one-off costs) whenever there is more than one. Missing or unreadable images are
skipped, counted and listed in the report; the run goes on.

Under ``accelerate launch`` / ``torchrun`` (``processes``, a :class:`~finedefics_data.sharding.DataParallel`) the
batches, formed as in one process, are split over the ranks in contiguous runs; each rank scores its own, and the
records, unreadable images and timings are merged in rank order, so every rank returns the report one process
would have produced: the same predictions in the same order, the same metrics and intervals. Only the timings
differ: a mode's ``seconds`` is the slowest rank's, and ``images_per_second`` the whole launch's (every rank's
steady-state images over the slowest rank's steady-state seconds); ``processes`` records the world size.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime, timezone

from .report import DEFAULT_BOOTSTRAP_SAMPLES, mode_metrics
from .scoring import FOCI_MAX_NEW_TOKENS, MC_MODES, SharedBatch, build_scorers, check_modes, prepare_examples

logger = logging.getLogger(__name__)

SKIPPED_LISTED = 20


def evaluate_model(model, processor, benchmark, modes=MC_MODES, seed: int = 0, batch_size: int = 8,
                   max_new_tokens: int = FOCI_MAX_NEW_TOKENS, likelihood_answer: str = "letter",
                   prompt_template: str = "{}", bootstrap_samples: int = DEFAULT_BOOTSTRAP_SAMPLES,
                   progress: bool = True, model_name: str | None = None, processes=None) -> dict:
    """Score ``benchmark`` with each of ``modes`` and return the report dict.

    Args:
        model: a Finedefics model of any family (``modeling_finedefics.families``; put in eval mode here).
        processor: its Finedefics processor (of the same family).
        benchmark: a :class:`~finedefics_eval.benchmarks.Benchmark`.
        modes: any of ``generate``, ``likelihood``, ``embedding``, ``open_set``.
        seed: seeds the option order (the same for every mode); recorded in the report.
        batch_size: examples per forward pass.
        max_new_tokens: generation budget of ``generate`` (FOCI: 10).
        likelihood_answer: the answer ``likelihood`` scores: ``letter`` (default), ``letter_name`` or ``name``.
        prompt_template: wraps the FOCI prompt text (``"{}"``: as is).
        bootstrap_samples: resamples of the 95% intervals (0: none).
        progress: show a progress bar.
        model_name: how the report names the model (default: the model's ``name_or_path``).
        processes: a :class:`~finedefics_data.sharding.DataParallel` to share the work with (default: this
            process alone, or every process of the launch it belongs to).

    Returns:
        ``{"model", "benchmark", "split", "seed", "n", "n_scored", "skipped", "protocol", "modes",
        "predictions", ...}``; ``modes[mode]`` holds ``accuracy``, ``ci95``, ``macro_accuracy``,
        ``failures``, ``images_per_second`` and more; ``predictions[mode]`` the FOCI-format records.

    Raises:
        ValueError: an unknown mode, a batch size below 1, or no image of the benchmark could be read.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    from finedefics_data.sharding import DataParallel

    modes = check_modes(modes)
    processes = processes if processes is not None else DataParallel()
    model.eval()
    prepared = prepare_examples(benchmark.examples, benchmark.query, seed, prompt_template)
    missing_ids = {example.example_id for example in benchmark.missing_images()}
    if missing_ids and processes.is_main:
        logger.warning("%s: %d of %d images are missing under %s; they are skipped and reported",
                       benchmark.name, len(missing_ids), len(prepared), benchmark.image_root)
    to_score = [item for item in prepared if item.example.example_id not in missing_ids]
    scorers, setup_seconds = _timed_scorers(model, processor, benchmark, modes, max_new_tokens, likelihood_answer)
    batches = processes.shard([to_score[start:start + batch_size] for start in range(0, len(to_score), batch_size)])
    part = _score_all(model, processor, benchmark, batches, scorers, progress and processes.is_main,
                      processes.world_size)
    records, unreadable, timings, setup_seconds = _merge_ranks(processes.gather((*part, setup_seconds)))
    scored = len(to_score) - len(unreadable)
    if scored == 0:
        raise ValueError(f"benchmark {benchmark.name!r}: none of its {len(prepared)} images could be read "
                         f"({len(missing_ids)} missing, {len(unreadable)} unreadable) under {benchmark.image_root}")
    skipped = [item.example.image for item in prepared if item.example.example_id in missing_ids] + unreadable
    report = _report_header(model, benchmark, seed, len(prepared), scored, len(missing_ids), unreadable, skipped,
                            model_name)
    report["processes"] = processes.world_size
    report["protocol"] = {"query": benchmark.query, "open_set_question": benchmark.open_set_question,
                          "prompt_template": prompt_template, "max_new_tokens": max_new_tokens,
                          "likelihood_answer": likelihood_answer, "batch_size": batch_size,
                          "option_order": f"per-example shuffle seeded by (seed={seed}, example id)"}
    report["modes"] = {mode: _mode_report(scorer, records[mode], benchmark, timings[mode], setup_seconds[mode],
                                          bootstrap_samples, seed) for mode, scorer in scorers.items()}
    report["predictions"] = records
    return report


def _timed_scorers(model, processor, benchmark, modes, max_new_tokens: int, likelihood_answer: str):
    """Build the scorers, timing each set-up (the embedding mode embeds every category name here)."""
    scorers, setup_seconds = {}, {}
    for mode in modes:
        start = time.perf_counter()
        scorers.update(build_scorers(model, processor, benchmark, [mode], max_new_tokens, likelihood_answer))
        setup_seconds[mode] = time.perf_counter() - start
    return scorers, setup_seconds


def _score_all(model, processor, benchmark, batches, scorers: dict, progress: bool, world_size: int = 1):
    """Run every scorer over the batches, each batch's image work shared by the scorers.

    Returns the records per mode, the unreadable image paths, and per mode a list of
    ``(images scored, seconds)`` per batch.
    """
    from tqdm.auto import tqdm

    records = {mode: [] for mode in scorers}
    timings = {mode: [] for mode in scorers}
    unreadable: list[str] = []
    # generate first: its prefill holds the letter-likelihood scores, kept for the likelihood scorer to read.
    run_order = sorted(scorers, key=lambda mode: not scorers[mode].writes_prompt_logits)
    keep_prompt_logits = (any(scorer.writes_prompt_logits for scorer in scorers.values())
                          and any(scorer.reads_prompt_logits for scorer in scorers.values()))
    shard = f", rank 0 of {world_size}" if world_size > 1 else ""
    bar = tqdm(total=sum(map(len, batches)), desc=f"{benchmark.name} [{', '.join(scorers)}{shard}]", unit="img",
               disable=not progress)
    for batch in batches:
        load_start = time.perf_counter()
        images, items = _load_batch(benchmark, batch, unreadable)
        load_seconds = time.perf_counter() - load_start
        shared = SharedBatch(model, processor, images, keep_prompt_logits=keep_prompt_logits)
        for mode in run_order:
            seconds = 0.0
            if items:
                mode_records, seconds = _timed_call(scorers[mode], images, items, shared)
                records[mode].extend(mode_records)
            timings[mode].append((len(items), seconds + load_seconds))
        bar.update(len(batch))
    bar.close()
    return records, unreadable, timings


def _merge_ranks(parts: list[tuple]):
    """Every rank's ``(records, unreadable, timings, setup seconds)`` as one process's, in rank order.

    Records and unreadable images are concatenated; per mode, the timings become one list per rank (what
    ``steady_state_speed`` and ``_mode_report`` read) and the set-up time the slowest rank's.
    """
    modes = list(parts[0][0])
    records = {mode: [record for part in parts for record in part[0][mode]] for mode in modes}
    unreadable = [path for part in parts for path in part[1]]
    timings = {mode: [part[2][mode] for part in parts] for mode in modes}
    setup_seconds = {mode: max(part[3][mode] for part in parts) for mode in modes}
    return records, unreadable, timings, setup_seconds


def _timed_call(scorer, images, items, shared: SharedBatch) -> tuple[list[dict], float]:
    """The scorer's records and its time: its own work plus every piece of shared work it used.

    Shared work done during this call is taken out of the call's wall time and charged back by piece,
    so a mode that reuses features another mode computed pays for them all the same.
    """
    already_done = set(shared.seconds)
    shared.start_use()
    start = time.perf_counter()
    mode_records = scorer(images, items, shared=shared)
    wall = time.perf_counter() - start
    done_here = sum(seconds for piece, seconds in shared.seconds.items() if piece not in already_done)
    used = sum(shared.seconds[piece] for piece in shared.used)
    return mode_records, wall - done_here + used


def _load_batch(benchmark, batch, unreadable: list[str]):
    """The batch's images; one that cannot be read is logged, recorded in ``unreadable`` and left out."""
    images, items = [], []
    for item in batch:
        try:
            images.append(benchmark.load_image(item.example))
        except (FileNotFoundError, ValueError) as error:
            logger.warning("skipping example %s: %s", item.example.example_id, error)
            unreadable.append(item.example.image)
            continue
        items.append(item)
    return images, items


def _report_header(model, benchmark, seed, total, scored, missing, unreadable, skipped, model_name) -> dict:
    return {
        "model": model_name or getattr(model, "name_or_path", None) or type(model).__name__,
        "benchmark": benchmark.name, "split": benchmark.split, "seed": seed, "n": total, "n_scored": scored,
        "skipped": {"missing_images": missing, "unreadable_images": len(unreadable),
                    "examples": skipped[:SKIPPED_LISTED]},
        "benchmark_info": benchmark.describe(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "versions": _versions(),
    }


def _mode_report(scorer, records: list[dict], benchmark, rank_timings: list[list[tuple[int, float]]],
                 setup_seconds: float, bootstrap_samples: int, seed: int) -> dict:
    failures = scorer.failures(records, benchmark.categories)
    metrics = mode_metrics(records, failures, bootstrap_samples, seed, benchmark.rare_categories)
    metrics.update(scorer.report_metrics(records, bootstrap_samples, seed, setup_seconds))
    metrics["seconds"] = setup_seconds + max(sum(seconds for _, seconds in timings) for timings in rank_timings)
    metrics["images_per_second"] = steady_state_speed(*rank_timings)
    return metrics


def steady_state_speed(*rank_timings: list[tuple[int, float]]) -> float | None:
    """Images per second over all batches but the first (one-off costs), or over the only batch.

    With several ranks' timings (ranks working side by side): every rank's counted images over the slowest rank's
    counted seconds, the launch's throughput.
    """
    images, seconds = 0, 0.0
    for timings in rank_timings:
        counted = timings[1:] if len(timings) > 1 else timings
        images += sum(n for n, _ in counted)
        seconds = max(seconds, sum(s for _, s in counted))
    return images / seconds if seconds > 0 and images else None


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for package in ("finedefics", "transformers", "torch"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = None
    return found


__all__ = ["evaluate_model"]
