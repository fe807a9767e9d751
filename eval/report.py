"""Evaluation reports: metrics from prediction records, ``report.json``, ``report.md``, FOCI prediction
files and plots; and reports built from FOCI's own prediction files.

A report is a plain dict (see :func:`finedefics_eval.runner.evaluate_model`); while in memory it
also holds each mode's prediction records under ``"predictions"``. :func:`write_report` writes

    report.json                  everything but the records (which it lists under "files")
    report.md                    the same numbers as tables, with the plots
    predictions-<mode>.json      FOCI's prediction format ({"metrics", "predictions", "config"})
    plots/*.png                  accuracy by mode, per-class accuracy, most confused pairs, rare vs common

Metrics come from the ``evaluate`` modules shipped in ``finedefics_eval/metrics`` (loaded by path,
so offline).
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from functools import lru_cache
from importlib import resources
from pathlib import Path

from .foci import foci_metrics, is_failure, read_prediction_file, write_prediction_file

logger = logging.getLogger(__name__)

METRIC_NAMES = ("accuracy", "macro_accuracy", "generation_failure_rate")
DEFAULT_BOOTSTRAP_SAMPLES = 1000
CONFUSED_PAIRS_KEPT = 20
PLOTTED_CLASSES = 30
PLOTTED_PAIRS = 15
ACCURACY_TOLERANCE = 1e-9


# ----------------------------------------------------------------------------- metrics
def metrics_dir() -> Path:
    """The folder of the shipped ``evaluate`` metric modules (one sub-folder per metric)."""
    return Path(str(resources.files(__package__).joinpath("metrics")))


@lru_cache(maxsize=None)
def load_metric(name: str):
    """An ``evaluate`` metric module shipped with this package, loaded by path (no Hub access)."""
    import evaluate

    if name not in METRIC_NAMES:
        raise ValueError(f"unknown metric {name!r}; shipped metrics are {', '.join(METRIC_NAMES)}")
    return evaluate.load(str(metrics_dir() / name))


def accuracy_with_ci(predictions: list[str], references: list[str], bootstrap_samples: int, seed: int) -> dict:
    """``{"accuracy", "ci95", "n"}`` from the shipped accuracy module."""
    return load_metric("accuracy").compute(predictions=predictions, references=references,
                                           bootstrap_samples=bootstrap_samples, seed=seed)


def mode_metrics(records: list[dict], failures: list[bool], bootstrap_samples: int = DEFAULT_BOOTSTRAP_SAMPLES,
                 seed: int = 0, rare_categories=None) -> dict:
    """Accuracy, macro accuracy and failure rate (each with a bootstrap 95% interval) of one mode's records.

    Also per-class accuracy, the most confused (true, predicted) pairs, and, where ``rare_categories``
    is given, accuracy on rare and on common categories.
    """
    predictions = [record["predicted"] for record in records]
    references = [record["correct"] for record in records]
    accuracy = accuracy_with_ci(predictions, references, bootstrap_samples, seed)
    macro = load_metric("macro_accuracy").compute(predictions=predictions, references=references,
                                                  bootstrap_samples=bootstrap_samples, seed=seed)
    failed = load_metric("generation_failure_rate").compute(failures=failures, bootstrap_samples=bootstrap_samples,
                                                            seed=seed)
    metrics = {
        "n": accuracy["n"], "accuracy": accuracy["accuracy"], "ci95": accuracy["ci95"],
        "macro_accuracy": macro["macro_accuracy"], "macro_ci95": macro["ci95"],
        "failures": failed["failures"], "failure_rate": failed["failure_rate"], "failure_ci95": failed["ci95"],
        "per_class": macro["per_class"], "confused_pairs": confused_pairs(records, failures),
    }
    if rare_categories is not None:
        metrics["rare_vs_common"] = rare_vs_common(records, rare_categories, bootstrap_samples, seed)
    return metrics


def confused_pairs(records: list[dict], failures: list[bool], keep: int = CONFUSED_PAIRS_KEPT) -> list[dict]:
    """The most frequent wrong (true, predicted) pairs; generation failures name no category, so no pair."""
    counts = Counter((r["correct"], r["predicted"]) for r, failed in zip(records, failures)
                     if r["predicted"] != r["correct"] and not failed)
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    return [{"true": true, "predicted": predicted, "count": count} for (true, predicted), count in ranked[:keep]]


def rare_vs_common(records: list[dict], rare_categories, bootstrap_samples: int, seed: int) -> dict:
    """Accuracy (with interval) on examples of rare and of common categories; None for an empty group."""
    rare = set(rare_categories)
    groups = {"rare": [r for r in records if r["correct"] in rare],
              "common": [r for r in records if r["correct"] not in rare]}
    return {
        name: accuracy_with_ci([r["predicted"] for r in group], [r["correct"] for r in group], bootstrap_samples, seed)
        if group else None
        for name, group in groups.items()
    }


def top_k_metrics(records: list[dict], bootstrap_samples: int, seed: int) -> dict:
    """Embedding mode over ALL categories: top-1 and top-5 accuracy, with intervals."""
    references = [r["correct"] for r in records]
    top1 = [r["top5_all"][0] for r in records]
    # A top-5 hit is scored as predicting the reference itself.
    top5 = [r["correct"] if r["correct"] in r["top5_all"] else r["top5_all"][0] for r in records]
    first = accuracy_with_ci(top1, references, bootstrap_samples, seed)
    fifth = accuracy_with_ci(top5, references, bootstrap_samples, seed)
    return {"top1_all": first["accuracy"], "top1_all_ci95": first["ci95"],
            "top5_all": fifth["accuracy"], "top5_all_ci95": fifth["ci95"]}


# ----------------------------------------------------------------------------- FOCI files
def report_from_prediction_file(path: str | Path, bootstrap_samples: int = DEFAULT_BOOTSTRAP_SAMPLES,
                                seed: int = 0, rare_categories=None) -> dict:
    """A report, in the same shape as a model run's, from a FOCI prediction file.

    FOCI's runner generates, so the records become the ``generate`` mode. The accuracy is recomputed
    from the records and must equal the file's stored ``metrics.accuracy``.

    Raises:
        ValueError: the recomputed accuracy or failure share differs from the stored one.
    """
    run = read_prediction_file(path)
    recomputed = foci_metrics(run.predictions)
    for key in ("accuracy", "generation_failures"):
        stored = run.metrics.get(key)
        if stored is not None and abs(stored - recomputed[key]) > ACCURACY_TOLERANCE:
            raise ValueError(f"{run.path}: stored metrics.{key} {stored} differs from {recomputed[key]} "
                             "recomputed from its predictions")
    metrics = mode_metrics(run.predictions, [is_failure(r) for r in run.predictions], bootstrap_samples, seed,
                           rare_categories)
    metrics.update(images_per_second=None, seconds=None, stored_metrics=run.metrics)
    config = run.config
    return {
        "model": config.get("model"), "benchmark": config.get("dataset") or run.path.stem, "split": "test",
        "seed": None, "n": len(run.predictions), "n_scored": len(run.predictions),
        "skipped": {"missing_images": 0, "unreadable_images": 0, "examples": []},
        "source": f"FOCI prediction file {run.path.name}",
        "protocol": {"query": config.get("prompt_query"), "option_order": "FOCI's unseeded shuffle",
                     "max_new_tokens": 10, "foci_config": config},
        "modes": {"generate": metrics},
        "predictions": {"generate": run.predictions},
    }


# ----------------------------------------------------------------------------- writing
def write_report(report: dict, output_dir: str | Path, plots: bool = True) -> Path:
    """Write ``report.json``, ``report.md``, one FOCI prediction file per mode and the plots; return the folder."""
    output = Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)
    saved = {key: value for key, value in report.items() if key != "predictions"}
    files = {"report": "report.json", "markdown": "report.md", "predictions": {}, "plots": []}
    for mode, records in report.get("predictions", {}).items():
        name = f"predictions-{mode}.json"
        write_prediction_file(output / name, records, _foci_config(report, mode))
        files["predictions"][mode] = name
    if plots:
        files["plots"] = [path.relative_to(output).as_posix() for path in write_plots(report, output / "plots")]
    saved["files"] = files
    (output / "report.json").write_text(json.dumps(saved, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    (output / "report.md").write_text(render_markdown(saved), encoding="utf-8")
    logger.info("report written to %s", output)
    return output


def _foci_config(report: dict, mode: str) -> dict:
    """The ``config`` block of a prediction file: FOCI's keys where they apply, plus this run's settings."""
    protocol = report.get("protocol", {})
    if "foci_config" in protocol:
        return protocol["foci_config"]
    return {"dataset": report.get("benchmark"), "model": report.get("model"), "prompt_query": protocol.get("query"),
            "choice_enumeration": "ABCD", "task": "mc" if mode != "open_set" else "open_set", "mode": mode,
            "seed": report.get("seed"), "split": report.get("split")}


def load_report(path: str | Path) -> dict:
    """A report from ``report.json`` or the folder holding it."""
    path = Path(path)
    if path.is_dir():
        path = path / "report.json"
    from finedefics_data.schema import read_json_file

    return read_json_file(path, "eval report")


# ----------------------------------------------------------------------------- several benchmarks
def summarize_reports(reports: dict, seed: int | None = None) -> dict:
    """One summary of several benchmarks' reports: ``{"model", "seed", "benchmarks", "mean_accuracy"}``.

    ``mean_accuracy[mode]`` is the unweighted mean over the benchmarks scored in that mode (how
    FGVR papers average FOCI's datasets); records are left out.
    """
    first = next(iter(reports.values()))
    benchmarks = {name: {k: v for k, v in report.items() if k != "predictions"} for name, report in reports.items()}
    modes = dict.fromkeys(mode for report in reports.values() for mode in report["modes"])
    means = {}
    for mode in modes:
        values = [r["modes"][mode]["accuracy"] for r in reports.values() if mode in r["modes"]]
        means[mode] = {"accuracy": sum(values) / len(values), "benchmarks": len(values)}
    return {"model": first.get("model"), "seed": seed if seed is not None else first.get("seed"),
            "benchmarks": benchmarks, "mean_accuracy": means}


def write_reports(reports: dict, output_dir: str | Path, seed: int | None = None, plots: bool = True) -> dict:
    """Write one benchmark's report into ``output_dir``, or several into ``output_dir/<name>`` plus a summary.

    The summary (``output_dir/report.json`` + ``report.md``, :func:`summarize_reports`) points at each
    benchmark's report; it is the shape ``finedefics push --report`` turns into the model card.
    Returns ``{name: folder}``.
    """
    output_dir = Path(output_dir)
    several = len(reports) > 1
    folders = {name: write_report(report, output_dir / report_folder_name(name) if several else output_dir,
                                  plots=plots)
               for name, report in reports.items()}
    if several:
        summary = summarize_reports(reports, seed)
        for name in summary["benchmarks"]:
            summary["benchmarks"][name]["report"] = f"{report_folder_name(name)}/report.json"
        (output_dir / "report.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n",
                                                encoding="utf-8")
        (output_dir / "report.md").write_text(render_summary_markdown(summary), encoding="utf-8")
    return folders


def report_folder_name(name: str) -> str:
    """A benchmark name as a folder name (``foci:bird-200`` -> ``foci_bird-200``)."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def unique_name(existing, name: str) -> str:
    """``name``, or ``name-2``, ``name-3``, ... if ``existing`` already holds it (two runs of one benchmark)."""
    candidate, number = name, 2
    while candidate in existing:
        candidate, number = f"{name}-{number}", number + 1
    return candidate


def summary_lines(name: str, report: dict) -> list[str]:
    """What ``finedefics eval`` prints for a benchmark: accuracy with its interval per mode, and skipped images."""
    lines = []
    for mode, metrics in report["modes"].items():
        interval = metrics.get("ci95") or [float("nan")] * 2
        speed = metrics.get("images_per_second")
        lines.append(f"{name} {mode}: accuracy {100 * metrics['accuracy']:.2f} "
                     f"(95% CI {100 * interval[0]:.2f}-{100 * interval[1]:.2f}), failures {metrics['failures']}, "
                     f"n {metrics['n']}" + (f", {speed:.1f} images/s" if speed else ""))
    skipped = report["skipped"]
    if skipped["missing_images"] or skipped["unreadable_images"]:
        lines.append(f"{name}: skipped {skipped['missing_images']} missing and {skipped['unreadable_images']} "
                     "unreadable images (listed in report.json)")
    return lines


def render_summary_markdown(summary: dict) -> str:
    """A benchmark x mode accuracy table (%) with the mean over benchmarks."""
    modes = list(summary["mean_accuracy"])
    lines = [f"# Evaluation summary: `{summary.get('model')}`", "", f"Option-order seed: {summary.get('seed')}", "",
             "| benchmark | " + " | ".join(modes) + " |", "|---" * (len(modes) + 1) + "|"]
    for name, report in summary["benchmarks"].items():
        cells = [_pct(report["modes"][mode]["accuracy"]) if mode in report["modes"] else "-" for mode in modes]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append("| **mean** | " + " | ".join(_pct(summary["mean_accuracy"][m]["accuracy"]) for m in modes) + " |")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- markdown
def render_markdown(report: dict) -> str:
    """``report.md``: the run's identity, a table per kind of number, skipped images and the plots."""
    protocol, info = report.get("protocol", {}), report.get("benchmark_info", {})
    lines = [f"# Evaluation: {report.get('benchmark')}", "",
             f"- model: `{report.get('model')}`", f"- benchmark: {report.get('benchmark')} ({report.get('split')})",
             f"- options: {info.get('options_source', 'option file')}; order: {protocol.get('option_order', '-')}",
             f"- question: {protocol.get('query')}; generation budget: {protocol.get('max_new_tokens')} tokens",
             f"- examples: {report.get('n_scored')} scored of {report.get('n')}", ""]
    skipped = report.get("skipped", {})
    if skipped.get("missing_images") or skipped.get("unreadable_images"):
        lines += [f"**Skipped:** {skipped.get('missing_images', 0)} missing and {skipped.get('unreadable_images', 0)} "
                  "unreadable images (not scored; first ones listed in report.json).", ""]
    lines += _mode_table(report["modes"]) + [""]
    lines += _embedding_table(report["modes"])
    lines += _rare_table(report["modes"])
    for plot in report.get("files", {}).get("plots", []):
        lines += [f"![{Path(plot).stem}]({plot})", ""]
    return "\n".join(lines).rstrip() + "\n"


def _mode_table(modes: dict) -> list[str]:
    rows = ["| mode | accuracy | 95% CI | macro accuracy | failures | images/s |", "|---|---|---|---|---|---|"]
    for mode, m in modes.items():
        rows.append(f"| {mode} | {_pct(m['accuracy'])} | {_ci(m.get('ci95'))} | {_pct(m['macro_accuracy'])} | "
                    f"{m['failures']} ({_pct(m['failure_rate'])}) | {_number(m.get('images_per_second'))} |")
    return rows


def _embedding_table(modes: dict) -> list[str]:
    if "top1_all" not in modes.get("embedding", {}):
        return []
    m = modes["embedding"]
    return ["Embedding mode over all categories:", "", "| top-1 | 95% CI | top-5 | 95% CI |", "|---|---|---|---|",
            f"| {_pct(m['top1_all'])} | {_ci(m['top1_all_ci95'])} | {_pct(m['top5_all'])} | "
            f"{_ci(m['top5_all_ci95'])} |",
            ""]


def _rare_table(modes: dict) -> list[str]:
    rows = [(mode, m["rare_vs_common"]) for mode, m in modes.items() if m.get("rare_vs_common")]
    if not rows:
        return []
    lines = ["Rare vs common categories:", "", "| mode | rare | n | common | n |", "|---|---|---|---|---|"]
    for mode, groups in rows:
        cells = [(_pct(g["accuracy"]), g["n"]) if g else ("-", 0) for g in (groups["rare"], groups["common"])]
        lines.append(f"| {mode} | {cells[0][0]} | {cells[0][1]} | {cells[1][0]} | {cells[1][1]} |")
    return lines + [""]


def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:.2f}"


def _ci(interval) -> str:
    return "-" if not interval else f"{100 * interval[0]:.2f} – {100 * interval[1]:.2f}"


def _number(value) -> str:
    return "-" if value is None else f"{value:.2f}"


# ----------------------------------------------------------------------------- plots
def write_plots(report: dict, folder: Path) -> list[Path]:
    """Accuracy by mode, per-class accuracy and confused pairs per mode, rare vs common; PNG files."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    folder.mkdir(parents=True, exist_ok=True)
    modes = report["modes"]
    written = [_plot_accuracy_by_mode(modes, folder / "accuracy_by_mode.png")]
    for mode, metrics in modes.items():
        written.append(_plot_per_class(mode, metrics["per_class"], folder / f"per_class_accuracy-{mode}.png"))
        if metrics["confused_pairs"]:
            written.append(_plot_confused_pairs(mode, metrics["confused_pairs"],
                                                folder / f"confused_pairs-{mode}.png"))
    if any(m.get("rare_vs_common") for m in modes.values()):
        written.append(_plot_rare_vs_common(modes, folder / "rare_vs_common.png"))
    return written


def _save(figure, path: Path) -> Path:
    import matplotlib.pyplot as plt

    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def _plot_accuracy_by_mode(modes: dict, path: Path) -> Path:
    import matplotlib.pyplot as plt

    names = list(modes)
    values = [100 * modes[n]["accuracy"] for n in names]
    errors = [[100 * (modes[n]["accuracy"] - (modes[n]["ci95"] or [modes[n]["accuracy"]] * 2)[0]) for n in names],
              [100 * ((modes[n]["ci95"] or [modes[n]["accuracy"]] * 2)[1] - modes[n]["accuracy"]) for n in names]]
    figure, axis = plt.subplots(figsize=(1.6 * len(names) + 2, 3.5))
    axis.bar(names, values, yerr=errors, capsize=4, color="tab:blue")
    axis.axhline(25, color="grey", linestyle="--", linewidth=1, label="chance (4 options)")
    axis.set_ylabel("accuracy (%) with 95% CI")
    axis.set_ylim(0, 100)
    axis.legend(loc="upper right", fontsize=8)
    return _save(figure, path)


def _plot_per_class(mode: str, per_class: dict, path: Path) -> Path:
    import matplotlib.pyplot as plt

    ranked = sorted(per_class.items(), key=lambda item: (item[1], item[0]))
    shown = ranked[:PLOTTED_CLASSES]
    figure, axis = plt.subplots(figsize=(7, 0.25 * len(shown) + 1.2))
    axis.barh([name for name, _ in shown], [100 * value for _, value in shown], color="tab:orange")
    axis.invert_yaxis()
    axis.set_xlim(0, 100)
    axis.set_xlabel("accuracy (%)")
    title = f"{mode}: per-class accuracy"
    axis.set_title(title if len(ranked) <= PLOTTED_CLASSES else f"{title}, lowest {len(shown)} of {len(ranked)}",
                   fontsize=9)
    axis.tick_params(axis="y", labelsize=7)
    return _save(figure, path)


def _plot_confused_pairs(mode: str, pairs: list[dict], path: Path) -> Path:
    import matplotlib.pyplot as plt

    shown = pairs[:PLOTTED_PAIRS]
    figure, axis = plt.subplots(figsize=(8, 0.3 * len(shown) + 1.2))
    axis.barh([f"{p['true']} → {p['predicted']}" for p in shown], [p["count"] for p in shown], color="tab:red")
    axis.invert_yaxis()
    axis.set_xlabel("examples")
    axis.set_title(f"{mode}: most confused pairs (true → predicted)", fontsize=9)
    axis.tick_params(axis="y", labelsize=7)
    return _save(figure, path)


def _plot_rare_vs_common(modes: dict, path: Path) -> Path:
    import matplotlib.pyplot as plt

    names = [n for n, m in modes.items() if m.get("rare_vs_common")]
    figure, axis = plt.subplots(figsize=(1.8 * len(names) + 2, 3.5))
    width = 0.38
    for offset, group, colour in ((-width / 2, "rare", "tab:purple"), (width / 2, "common", "tab:green")):
        values = [100 * (modes[n]["rare_vs_common"][group] or {"accuracy": 0})["accuracy"] for n in names]
        axis.bar([i + offset for i in range(len(names))], values, width, label=group, color=colour)
    axis.set_xticks(range(len(names)), names)
    axis.set_ylim(0, 100)
    axis.set_ylabel("accuracy (%)")
    axis.legend(fontsize=8)
    return _save(figure, path)


__all__ = [
    "load_metric", "load_report", "metrics_dir", "mode_metrics", "render_markdown", "render_summary_markdown",
    "report_from_prediction_file", "summarize_reports", "top_k_metrics", "write_plots", "write_report",
]
