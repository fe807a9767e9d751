"""The demo's report: the premise, per-seed and mean accuracy tables, the gaps, the ablation table, curves.

Every gap is Finedefics minus another variant that ran: the instruction-tuning baselines (equal total
optimizer steps; equal stage II steps, the paper's protocol) and the ablations (no hard negatives, no
attribute descriptions, single stage), each labelled with its protocol. A gap is given three ways: its
mean over the training seeds, its spread over them (each seed's gap), and a 95% interval over test
images (a paired bootstrap of the seed-averaged per-image difference: every model answers the same
questions in the same option order, so the comparison is paired). The report also gives the share of
stage I's in-batch negatives that are siblings (``siblings.py``).
"""

from __future__ import annotations

import json
import random
import statistics
from pathlib import Path

from .plan import recorded_plan
from .variants import ABLATION_TABLE_ORDER, VARIANTS, describe_variant

COLUMNS = [("generate", "generate"), ("likelihood", "likelihood"), ("embedding", "embedding (4-way)"),
           ("open_set", "open-set"), ("embedding_top1_all", "embedding top-1 (all)"),
           ("generate_rare", "generate rare"), ("generate_common", "generate common"),
           ("likelihood_rare", "likelihood rare"), ("embedding_rare", "embedding rare"),
           ("open_set_rare", "open-set rare")]
GAP_MODES = ("generate", "likelihood", "embedding", "open_set")
ABLATION_COLUMNS = [("generate", "generate"), ("likelihood", "likelihood"), ("embedding", "embedding"),
                    ("open_set", "open-set"), ("generate_rare", "generate rare")]
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


def markdown_table(rows: list[dict], with_std: bool = False, columns=COLUMNS) -> str:
    headers = ["model"] + [title for _, title in columns]
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for row in rows:
        cells = [row["model"]]
        for key, _ in columns:
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


def compared_variants(names) -> list[str]:
    """The variants Finedefics is compared with, of those in ``names``: baselines first, then ablations."""
    return [name for name, variant in VARIANTS.items() if variant.kind != "method" and name in names]


def gaps(scores: dict) -> dict:
    """Finedefics minus each other variant that ran (baselines and ablations), all questions and rare ones, per
    mode; each entry names its protocol."""
    first = scores[min(scores)]
    rare_rows = first["finedefics"]["rare_rows"]
    result = {}
    for other in compared_variants(first):
        label = {"protocol": VARIANTS[other].protocol, "kind": VARIANTS[other].kind}
        for mode in GAP_MODES:
            result[f"finedefics - {other}, {mode}"] = {**paired_gap(scores, "finedefics", other, mode), **label}
            if any(rare_rows):
                result[f"finedefics - {other}, {mode}, rare"] = {
                    **paired_gap(scores, "finedefics", other, mode, rows=rare_rows), **label}
    return result


def gap_lines(gap_table: dict) -> list[str]:
    lines = ["| comparison | protocol | mean gap | per seed | 95% interval (test images) |", "|---|---|---|---|---|"]
    for name, gap in gap_table.items():
        if not gap.get("n"):
            continue
        per_seed = ", ".join(f"{100 * g:+.1f}" for g in gap["per_seed"])
        low, high = gap["ci95"]
        lines.append(f"| {name} | {gap.get('protocol', '')} | {100 * gap['mean']:+.1f} | {per_seed} | "
                     f"[{100 * low:+.1f}, {100 * high:+.1f}] |")
    return lines


def ablation_rows(mean: list[dict]) -> list[dict]:
    """The paper's ablation table: Finedefics, its ablations and instruction tuning only, of the variants that ran."""
    by_name = {row["model"]: row for row in mean}
    return [{**by_name[name], "model": VARIANTS[name].title, "variant": name}
            for name in ABLATION_TABLE_ORDER if name in by_name]


def sibling_lines(measured: dict) -> list[str]:
    """One line per seed: the share of stage I's in-batch negatives that are siblings."""
    lines = []
    for seed, m in measured.items():
        if m.get("share") is None:
            continue
        chance = f"; {100 * m['chance']:.1f}% for pairs of training rows at random" if m.get("chance") is not None \
            else ""
        lines.append(f"In-batch negatives that are siblings ({m['relation']}) in the stage I batches the training "
                     f"sampler draws (seed {seed}, {m['batches']} batches of {m['batch_size']}): "
                     f"{100 * m['share']:.1f}% of {m['pairs']} (row, other-category row) pairs{chance}.")
    return lines


# ----------------------------------------------------------------------------- the premise
def description_lines(record: dict) -> list[str]:
    """The generated descriptions' section: how they were made and how right their attribute values are."""
    if record.get("source") != "generated":
        return []
    accuracy = record["attribute_accuracy"]
    per_attribute = ", ".join(f"{name} {100 * share:.1f}%" for name, share in accuracy["per_attribute"].items())
    return ["## Generated descriptions", "",
            f"**finedefics_generated** trains on descriptions the base model wrote for the {record['images']} "
            f"training images (`finedefics data describe`: one question per attribute, the value read from the "
            f"answer by `{record['answer_reader']}`, the sentence written by `{record['summary']}`; negatives: "
            f"{record['negatives']}). {record['described']} images described in {record['seconds']:.0f} s.", "",
            f"Attribute values right (of the {accuracy['values_scored']} values the ground-truth descriptions "
            f"state, read by the benchmark's parser): **{100 * accuracy['overall']:.1f}%** ({per_attribute}).", ""]


def premise_summary(premise: dict, base_scores: dict) -> dict:
    extraction, knowledge = premise["object_information_extraction"], premise["category_knowledge"]
    summary = {
        "object values": extraction.get("recall"),
        "distinguishing values": (extraction.get("distinguishing") or {}).get("recall"),
        "category knowledge": knowledge.get("recall"),
        "category knowledge (rare)": (knowledge.get("rare") or {}).get("recall"),
        "multiple choice in text": (premise.get("multiple_choice_in_text") or {}).get("accuracy"),
        "multiple choice in text (species named)": (premise.get("multiple_choice_in_text_named") or {}).get(
            "accuracy"),
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
                "multiple choice in text", "multiple choice in text (species named)",
                "4-way recognition (generate)"):
        value = summary.get(key)
        target = PREMISE_TARGETS.get(key)
        shown = "-" if value is None else f"{100 * value:.1f}%"
        goal = ("not measured" if target and value is None
                else f">= {100 * target:.0f}% ({'met' if summary['met'][key] else 'NOT met'})" if target
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
    keys += [key for key in ("loss_object_category",) if any(key in e for h in curves.values() for e in h)]
    colours = {name: f"C{i}" for i, name in enumerate(curves)}  # one colour per variant in every panel
    figure, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.4))
    for axis, key in zip(axes, keys):
        for name, history in curves.items():
            points = [(entry["step"], entry[key]) for entry in history if key in entry]
            if points:
                axis.plot(*zip(*points), label=name, linewidth=1.2, color=colours[name],
                          linestyle=_line(name))
        axis.set_title(key.replace("loss_", "").replace("_", "-"))
        axis.set_xlabel("optimizer step")
        axis.set_yscale("log")
    handles = [plt.Line2D([], [], color=colours[name], linestyle=_line(name)) for name in curves]
    axes[0].legend(handles, list(curves), fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return curves


def _line(name: str) -> str:
    """Ablations dashed, the rest solid."""
    return "--" if name in VARIANTS and VARIANTS[name].kind == "ablation" else "-"


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
                      split: str, sibling_negatives: dict | None = None, shipped_base: bool = False,
                      descriptions: dict | None = None) -> str:
    """report.json + report.md; returns the markdown table printed at the end of the demo.

    ``shipped_base``: the run started from the shipped base (the plan's base sizes were then not used).
    ``descriptions``: the generated descriptions' record (``descriptions.generate_descriptions``), if any ran."""
    base_scores = scores.pop("base")
    per_seed = {seed: [model_row("base", base_scores)] + [model_row(name, seed_scores[name]) for name in seed_scores]
                for seed, seed_scores in scores.items()}
    mean = mean_rows(per_seed)
    several = len(per_seed) > 1
    table = markdown_table(mean, with_std=several)
    gap_table = gaps(scores)
    ablation = ablation_rows(mean)
    summary = premise_summary(premise, base_scores)
    first = min(runs)
    curves = training_curves(runs[first], report_dir / "training_curves.png")
    used_plan, unused_plan = recorded_plan(plan, synthetic=data.synth_config is not None, shipped_base=shipped_base)
    payload = {
        "what": "finedefics demo: attribute-augmented alignment vs instruction tuning",
        "data": str(data.source), "split": split, "seeds": sorted(per_seed), "data_splits": data.split_lines(split),
        "base_model_note": ("The 'base' model stands in for Idefics2: it sees attributes, describes images and "
                            "knows in text what each category looks like; it was never taught to name a category "
                            "from an image. Every variant starts from it."),
        "plan": used_plan, "plan_not_used": unused_plan, "premise": {"summary": summary, **premise},
        "variants": {name: {"stages": describe_variant(name, plan), "comparison": VARIANTS[name].comparison}
                     for name in scores[min(scores)]},
        "comparison": mean, "comparison_per_seed": per_seed, "gaps": gap_table, "ablations": ablation,
        "in_batch_sibling_negatives": sibling_negatives or {},
        "descriptions": descriptions or {"source": "benchmark"},
        "models": {"base": _without_rows(base_scores),
                   **{f"seed-{s}/{n}": _without_rows(v)
                      for s, seed_scores in scores.items() for n, v in seed_scores.items()}},
        "phase_seconds": phases.state["done"], "training_curves": curves,
    }
    (report_dir / "report.json").write_text(json.dumps(payload, indent=2, default=str))
    (report_dir / "report.md").write_text(_markdown(payload, table, per_seed, gap_table, premise, summary, plan, data,
                                                    split, ablation))
    return table


def _without_rows(scores: dict) -> dict:
    return {k: v for k, v in scores.items() if k not in ("correct", "rare_rows")}


def _markdown(payload, table, per_seed, gap_table, premise, summary, plan, data, split, ablation) -> str:
    seeds = ", ".join(map(str, sorted(per_seed)))
    several = len(per_seed) > 1
    lines = [
        "# Finedefics demo report", "",
        f"Data: `{data.source}` ({split} split). Training seeds: {seeds}. Every variant starts from the same base "
        f"model and trains on the same training images, {plan.batch_size} rows per optimizer step:", "",
        *[f"- **{name}**: {variant['stages']}" + ("" if variant["comparison"] == "-" else f"; {variant['comparison']}")
          for name, variant in payload["variants"].items()], "",
        "Splits:", "", *payload["data_splits"], "",
        payload["base_model_note"], "",
        "## The premise", "", *premise_lines(premise, summary), "",
        "## Accuracy (%)", "",
        "4-way multiple choice with hard-negative options unless noted; *rare* = categories with few training images."
        + (" Mean ± standard deviation over the seeds." if len(per_seed) > 1 else ""), "", table, "",
        "## Finedefics minus instruction tuning and ablations (points)", "",
        "Protocols: *equal total steps* = as many optimizer steps as Finedefics' two stages together; *equal stage "
        "II steps* = the paper's protocol, Finedefics being stage I + the baseline's stage II; *same schedule* = "
        "Finedefics' two stages with one component removed.", "", *gap_lines(gap_table), "",
    ]
    if len(ablation) > 1:
        lines += ["## Ablations (%)", "", "The paper's ablation table in miniature (4-way multiple choice; open-set "
                  "naming)." + (" Mean ± standard deviation over the seeds." if several else ""), "",
                  markdown_table(ablation, with_std=several, columns=ABLATION_COLUMNS), ""]
    lines += [*sibling_lines(payload["in_batch_sibling_negatives"]), "", *description_lines(payload["descriptions"]),
              "![training curves](training_curves.png)", ""]
    if len(per_seed) > 1:
        lines += ["## Per seed", ""]
        for seed, rows in per_seed.items():
            lines += [f"Seed {seed}:", "", markdown_table(rows), ""]
    lines += ["Per-model evaluation reports (per-class accuracy, confused pairs, rare vs common, intervals): "
              + ", ".join(f"[{name}]({name}/report.md)" for name in payload["models"]), "",
              "Phase times (s): " + ", ".join(f"{k} {v:.0f}" for k, v in payload["phase_seconds"].items())]
    return "\n".join(lines) + "\n"
