"""The demo's report: the premise, per-seed and mean accuracy tables, the gap to the baseline, curves.

The gap between Finedefics and instruction tuning is given three ways: its mean over the training
seeds, its spread over them (each seed's gap), and a 95% interval over test images (a paired
bootstrap of the seed-averaged per-image difference: every model answers the same questions in the
same option order, so the comparison is paired).
"""

from __future__ import annotations

import json
import random
import statistics
from dataclasses import asdict
from pathlib import Path

COLUMNS = [("generate", "generate"), ("likelihood", "likelihood"), ("embedding", "embedding (4-way)"),
           ("open_set", "open-set"), ("embedding_top1_all", "embedding top-1 (all)"),
           ("generate_rare", "generate rare"), ("generate_common", "generate common"),
           ("likelihood_rare", "likelihood rare"), ("embedding_rare", "embedding rare"),
           ("open_set_rare", "open-set rare")]
GAP_MODES = ("generate", "likelihood", "embedding", "open_set")
BOOTSTRAP_SAMPLES = 2000
PREMISE_TARGETS = {"object values": 0.90, "distinguishing values": 0.80, "category knowledge": 0.90}


# ----------------------------------------------------------------------------- rows
def model_row(name: str, scores: dict) -> dict:
    """One table row: accuracy per mode, with the rare / common slices."""
    row = {"model": name}
    for mode, metrics in scores["modes"].items():
        row[mode] = metrics["accuracy"]
        slices = metrics.get("rare_vs_common") or {}
        for part in ("rare", "common"):
            if slices.get(part):
                row[f"{mode}_{part}"] = slices[part]["accuracy"]
    embedding = scores["modes"].get("embedding", {})
    if "top1_all" in embedding:
        row["embedding_top1_all"] = embedding["top1_all"]
    return row


def mean_rows(per_seed: dict[int, list[dict]]) -> list[dict]:
    """Mean and standard deviation over seeds of every cell, per model."""
    names = [row["model"] for row in next(iter(per_seed.values()))]
    rows = []
    for name in names:
        cells = [next(r for r in rows_ if r["model"] == name) for rows_ in per_seed.values()]
        row = {"model": name, "seeds": len(cells)}
        for key, _ in COLUMNS:
            values = [cell[key] for cell in cells if cell.get(key) is not None]
            if values:
                row[key] = statistics.fmean(values)
                row[f"{key}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
        rows.append(row)
    return rows


def markdown_table(rows: list[dict], with_std: bool = False) -> str:
    headers = ["model"] + [title for _, title in COLUMNS]
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for row in rows:
        cells = [row["model"]]
        for key, _ in COLUMNS:
            value = row.get(key)
            if value is None:
                cells.append("-")
            elif with_std and f"{key}_std" in row:
                cells.append(f"{100 * value:.1f} ± {100 * row[f'{key}_std']:.1f}")
            else:
                cells.append(f"{100 * value:.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- the gap
def paired_gap(scores: dict, model: str, baseline: str, mode: str, rows: list[bool] | None = None,
               samples: int = BOOTSTRAP_SAMPLES, seed: int = 0) -> dict:
    """``model - baseline`` accuracy over seeds: mean, per seed, and a paired bootstrap 95% interval.

    ``scores[seed][name]["correct"][mode]`` is the per-question correctness; ``rows`` restricts the
    questions (e.g. to rare categories).
    """
    seeds = sorted(scores)
    differences = []
    for s in seeds:
        ours, theirs = scores[s][model]["correct"][mode], scores[s][baseline]["correct"][mode]
        keep = rows if rows is not None else [True] * len(ours)
        differences.append([int(a) - int(b) for a, b, k in zip(ours, theirs, keep) if k])
    per_image = [statistics.fmean(values) for values in zip(*differences)]
    if not per_image:
        return {"n": 0}
    rng = random.Random(seed)
    n = len(per_image)
    resampled = sorted(statistics.fmean(rng.choices(per_image, k=n)) for _ in range(samples))
    return {"mean": statistics.fmean(per_image), "per_seed": [statistics.fmean(d) for d in differences],
            "ci95": [resampled[int(0.025 * samples)], resampled[int(0.975 * samples) - 1]], "n": n,
            "seeds": seeds}


def gaps(scores: dict) -> dict:
    """Finedefics and no-hard-negatives minus instruction tuning, all questions and rare ones, per mode."""
    first = scores[min(scores)]
    rare_rows = first["instruction_tuning"]["rare_rows"]
    result = {}
    for model in ("finedefics", "no_hard_negatives"):
        for mode in GAP_MODES:
            result[f"{model} - instruction_tuning, {mode}"] = paired_gap(scores, model, "instruction_tuning", mode)
            if any(rare_rows):
                result[f"{model} - instruction_tuning, {mode}, rare"] = paired_gap(
                    scores, model, "instruction_tuning", mode, rows=rare_rows)
    return result


def gap_lines(gap_table: dict) -> list[str]:
    lines = ["| comparison | mean gap | per seed | 95% interval (test images) |", "|---|---|---|---|"]
    for name, gap in gap_table.items():
        if not gap.get("n"):
            continue
        per_seed = ", ".join(f"{100 * g:+.1f}" for g in gap["per_seed"])
        low, high = gap["ci95"]
        lines.append(f"| {name} | {100 * gap['mean']:+.1f} | {per_seed} | [{100 * low:+.1f}, {100 * high:+.1f}] |")
    return lines


# ----------------------------------------------------------------------------- the premise
def premise_summary(premise: dict, base_scores: dict) -> dict:
    extraction, knowledge = premise["object_information_extraction"], premise["category_knowledge"]
    summary = {
        "object values": extraction.get("recall"),
        "distinguishing values": (extraction.get("distinguishing") or {}).get("recall"),
        "category knowledge": knowledge.get("recall"),
        "category knowledge (rare)": (knowledge.get("rare") or {}).get("recall"),
        "multiple choice in text": (premise.get("multiple_choice_in_text") or {}).get("accuracy"),
        "4-way recognition (generate)": base_scores["modes"]["generate"]["accuracy"],
    }
    summary["met"] = {key: summary[key] is not None and summary[key] >= target
                      for key, target in PREMISE_TARGETS.items()}
    return summary


def premise_lines(premise: dict, summary: dict) -> list[str]:
    extraction = premise["object_information_extraction"]
    lines = [
        f"Measured on the base model ({premise['split']} split, {extraction['images']} images described, "
        f"scored by {extraction['scored_by']}). Targets from the paper's premise: it describes what it sees, "
        "knows what each category looks like, and still cannot name the category from the image.", "",
        "| premise | measured | target |", "|---|---|---|",
    ]
    for key in ("object values", "distinguishing values", "category knowledge", "category knowledge (rare)",
                "multiple choice in text", "4-way recognition (generate)"):
        value = summary.get(key)
        target = PREMISE_TARGETS.get(key)
        shown = "-" if value is None else f"{100 * value:.1f}%"
        goal = (f">= {100 * target:.0f}% ({'met' if summary['met'][key] else 'NOT met'})" if target
                else "low (chance 25%)" if "recognition" in key
                else "diagnostic: the generate mode needs it (chance 25%)" if "multiple choice" in key else "")
        lines.append(f"| {key} | {shown} | {goal} |")
    per_attribute = extraction.get("per_attribute") or {}
    if per_attribute:
        lines += ["", "Per attribute (object information extraction): " +
                  ", ".join(f"{name} {100 * value:.0f}%" for name, value in per_attribute.items())]
    return lines


# ----------------------------------------------------------------------------- curves
def training_curves(runs: dict[str, list[Path]], path: Path) -> dict:
    """One panel per loss term; each variant's stages concatenated along the step axis. Returns the data."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = ["lm_loss", "loss_object_attribute", "loss_attribute_category", "loss_category_category"]
    curves = {name: _history(folders) for name, folders in runs.items()}
    colours = {name: f"C{i}" for i, name in enumerate(curves)}  # one colour per variant in every panel
    figure, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.4))
    for axis, key in zip(axes, keys):
        for name, history in curves.items():
            points = [(entry["step"], entry[key]) for entry in history if key in entry]
            if points:
                axis.plot(*zip(*points), label=name, linewidth=1.2, color=colours[name],
                          linestyle="--" if name == "no_hard_negatives" else "-")
        axis.set_title(key.replace("loss_", "").replace("_", "-"))
        axis.set_xlabel("optimizer step")
        axis.set_yscale("log")
    handles = [plt.Line2D([], [], color=colours[name], linestyle="--" if name == "no_hard_negatives" else "-")
               for name in curves]
    axes[0].legend(handles, list(curves), fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return curves


def _history(stage_dirs: list[Path]) -> list[dict]:
    """Logged training entries of consecutive stages, with steps made cumulative."""
    entries, offset = [], 0
    for stage_dir in stage_dirs:
        history = json.loads((Path(stage_dir) / "log_history.json").read_text())
        steps = [entry["step"] for entry in history if "step" in entry]
        entries += [{**entry, "step": entry["step"] + offset} for entry in history if "loss" in entry]
        offset += max(steps, default=0)
    return entries


# ----------------------------------------------------------------------------- the report
def write_demo_report(report_dir: Path, premise: dict, scores: dict, runs: dict, plan, phases, data,
                      split: str) -> str:
    """report.json + report.md; returns the markdown table printed at the end of the demo."""
    base_scores = scores.pop("base")
    per_seed = {seed: [model_row("base", base_scores)] + [model_row(name, seed_scores[name]) for name in seed_scores]
                for seed, seed_scores in scores.items()}
    mean = mean_rows(per_seed)
    several = len(per_seed) > 1
    table = markdown_table(mean, with_std=several)
    gap_table = gaps(scores)
    summary = premise_summary(premise, base_scores)
    first = min(runs)
    curves = training_curves(runs[first], report_dir / "training_curves.png")
    payload = {
        "what": "finedefics demo: attribute-augmented alignment vs instruction tuning",
        "data": str(data.source), "split": split, "seeds": sorted(per_seed),
        "base_model_note": ("The 'base' model stands in for Idefics2: it sees attributes, describes images and "
                            "knows in text what each category looks like; it was never taught to name a category "
                            "from an image. Every variant starts from it."),
        "plan": asdict(plan), "premise": {"summary": summary, **premise},
        "comparison": mean, "comparison_per_seed": per_seed, "gaps": gap_table,
        "models": {"base": _without_rows(base_scores),
                   **{f"seed-{s}/{n}": _without_rows(v)
                      for s, seed_scores in scores.items() for n, v in seed_scores.items()}},
        "phase_seconds": phases.state["done"], "training_curves": curves,
    }
    (report_dir / "report.json").write_text(json.dumps(payload, indent=2, default=str))
    (report_dir / "report.md").write_text(_markdown(payload, table, per_seed, gap_table, premise, summary, plan, data,
                                                    split))
    return table


def _without_rows(scores: dict) -> dict:
    return {k: v for k, v in scores.items() if k not in ("correct", "rare_rows")}


def _markdown(payload, table, per_seed, gap_table, premise, summary, plan, data, split) -> str:
    steps = f"{plan.stage1_steps} stage I + {plan.stage2_steps} stage II"
    seeds = ", ".join(map(str, sorted(per_seed)))
    lines = [
        "# Finedefics demo report", "",
        f"Data: `{data.source}` ({split} split). Training seeds: {seeds}. Every variant starts from the same base "
        f"model and takes the same number of optimizer steps ({steps}; the instruction-tuning baseline runs "
        f"{plan.stage1_steps + plan.stage2_steps} stage II steps) on the same training images.", "",
        payload["base_model_note"], "",
        "## The premise", "", *premise_lines(premise, summary), "",
        "## Accuracy (%)", "",
        "4-way multiple choice with hard-negative options unless noted; *rare* = categories with few training images."
        + (" Mean ± standard deviation over the seeds." if len(per_seed) > 1 else ""), "", table, "",
        "## Finedefics minus instruction tuning (points)", "", *gap_lines(gap_table), "",
        "![training curves](training_curves.png)", "",
    ]
    if len(per_seed) > 1:
        lines += ["## Per seed", ""]
        for seed, rows in per_seed.items():
            lines += [f"Seed {seed}:", "", markdown_table(rows), ""]
    lines += ["Per-model evaluation reports (per-class accuracy, confused pairs, rare vs common, intervals): "
              + ", ".join(f"[{name}]({name}/report.md)" for name in payload["models"]), "",
              "Phase times (s): " + ", ".join(f"{k} {v:.0f}" for k, v in payload["phase_seconds"].items())]
    return "\n".join(lines) + "\n"
