"""Model cards with evaluation results: Hub ``model-index`` entries from eval reports, rendered into a
checkpoint's ``README.md`` from the repository's ``model_card.md`` template.

    card = render_model_card(load_report("runs/eval/bird-200"), recipe=recipe, repo_id="me/finedefics-8b")
    write_model_card("runs/stage2/final", "runs/eval/bird-200", repo_id="me/finedefics-8b")

The template's master copy is ``model_card.md`` at the repository root; ``eval/templates/model_card.md``
is the copy shipped inside the package (so a non-editable install has it), kept identical to the
master by a test. Edit the master, then copy it over.

The usage example asks the question the checkpoint was trained with, for the objects it knows
(``config.object_noun``), and names categories of the evaluated benchmark.

Every mode of every benchmark becomes one ``EvalResult`` (huggingface_hub), accuracy in percent:
``task`` "fine-grained visual recognition (4-way multiple choice)" (``open_set`` has its own task),
``dataset`` the benchmark (FOCI datasets under their usual names), ``metric`` accuracy with the mode
as its ``config``. The embedding mode adds top-1 and top-5 over all categories.
"""

from __future__ import annotations

import json
import logging
from importlib import resources
from pathlib import Path

from finedefics_data.prompts import DEFAULT_NOUN, ObjectNoun, open_set_question

from .foci import FOCI_DATASETS

logger = logging.getLogger(__name__)

CARD_TAGS = ["finedefics", "fine-grained-visual-recognition", "idefics2", "multimodal"]
TASK_TYPE = "image-classification"
OPEN_SET_TASK_TYPE = "image-text-to-text"  # naming the object is generation, not a choice among classes
MC_TASK_NAME = "Fine-grained visual recognition (4-way multiple choice)"
OPEN_SET_TASK_NAME = "Fine-grained visual recognition (open set)"
TEMPLATE_NAME = "model_card.md"
PLACEHOLDER_LABELS = ["<a category name>", "<another category name>"]


def template_path() -> Path:
    """The model-card template shipped in the package (a copy of the repository's ``model_card.md``)."""
    return Path(str(resources.files(__package__).joinpath("templates", TEMPLATE_NAME)))


# ----------------------------------------------------------------------------- results
def benchmark_reports(report) -> list[dict]:
    """The per-benchmark reports inside ``report``: one report, a list, or ``{"benchmarks": {name: report}}``."""
    if report is None:
        return []
    if isinstance(report, (list, tuple)):
        return [single for item in report for single in benchmark_reports(item)]
    if not isinstance(report, dict):
        raise ValueError(f"an eval report must be a dict, got {type(report).__name__}")
    if "benchmarks" in report:
        return [{"benchmark": name, **entry} for name, entry in report["benchmarks"].items()]
    if "modes" in report or "accuracy" in report:
        return [report]
    raise ValueError("eval report has neither 'modes' nor 'benchmarks': not a finedefics eval report")


def eval_results_from_report(report) -> list:
    """``huggingface_hub.EvalResult`` entries (accuracy in %) for every benchmark and mode of ``report``."""
    return [result for result, _ in _result_entries(report)]


def _result_entries(report) -> list[tuple]:
    """(EvalResult, 95% interval in % or None) for every benchmark and mode of ``report``."""
    entries = []
    for single in benchmark_reports(report):
        modes = single.get("modes") or {"accuracy": {"accuracy": single["accuracy"]}}
        for mode, metrics in modes.items():
            entries += _mode_entries(single, mode, metrics)
    return entries


def _mode_entries(report: dict, mode: str, metrics: dict) -> list[tuple]:
    from huggingface_hub import EvalResult

    dataset_type, dataset_name = _dataset_identity(report)
    common = dict(
        task_type=OPEN_SET_TASK_TYPE if mode == "open_set" else TASK_TYPE,
        task_name=OPEN_SET_TASK_NAME if mode == "open_set" else MC_TASK_NAME,
        dataset_type=dataset_type, dataset_name=dataset_name, dataset_split=report.get("split") or "test",
        metric_type="accuracy",
    )
    partial = partial_evaluation(report)
    if partial:  # the card must not pass a figure over a few images off as the split's result
        common.update(metric_args=partial)
    note = f"; {_partial_note(partial)}" if partial else ""
    config = None if mode == "accuracy" else mode  # a bare {"accuracy": x} summary names no mode
    name = f"accuracy ({mode}{note})" if config else f"accuracy ({note[2:]})" if partial else "accuracy"
    entries = [(EvalResult(metric_value=_percent(metrics["accuracy"]), metric_config=config, metric_name=name,
                           **common),
                _percent_interval(metrics.get("ci95")))]
    categories = f"all {metrics['num_categories']} categories" if metrics.get("num_categories") else "all categories"
    for key, label in (("top1_all", "top-1"), ("top5_all", "top-5")):
        if metrics.get(key) is not None:
            entries.append((EvalResult(metric_value=_percent(metrics[key]), metric_config=f"{mode}-{key}",
                                       metric_name=f"{label} accuracy over {categories} ({mode}{note})", **common),
                            _percent_interval(metrics.get(f"{key}_ci95"))))
    return entries


def partial_evaluation(report: dict) -> dict | None:
    """How a report's figures fall short of its whole split, or None when every example was scored.

    ``{"n_scored", "n", "limit", "num_examples_before_limit", "missing_images", "unreadable_images"}`` for a run
    with ``--limit`` or with skipped images; carried into the card's ``model-index`` as the metric's ``args``.
    """
    info = report.get("benchmark_info") or {}
    skipped = report.get("skipped") or {}
    missing, unreadable = int(skipped.get("missing_images") or 0), int(skipped.get("unreadable_images") or 0)
    if info.get("limit") is None and not missing and not unreadable:
        return None
    return {"n_scored": report.get("n_scored"), "n": report.get("n"), "limit": info.get("limit"),
            "num_examples_before_limit": info.get("num_examples_before_limit"),
            "missing_images": missing, "unreadable_images": unreadable}


def _partial_note(partial: dict) -> str:
    """``partial: N=2 of 32 examples (--limit 2), 1 image skipped`` for a metric's name."""
    total = partial["num_examples_before_limit"] or partial["n"]
    parts = [f"partial: N={partial['n_scored']} of {total} examples"]
    if partial["limit"] is not None:
        parts[0] += f" (--limit {partial['limit']})"
    skipped = partial["missing_images"] + partial["unreadable_images"]
    if skipped:
        parts.append(f"{skipped} image{'s' if skipped != 1 else ''} skipped ({partial['missing_images']} missing, "
                     f"{partial['unreadable_images']} unreadable)")
    return ", ".join(parts)


def _dataset_identity(report: dict) -> tuple[str, str]:
    name = str(report.get("benchmark") or "benchmark")
    info = report.get("benchmark_info") or {}
    foci = FOCI_DATASETS.get(name)
    if foci:
        return foci.dataset_type, f"{foci.display_name} (FOCI {name})"
    return info.get("dataset_type") or name, info.get("display_name") or name


def _percent(value: float) -> float:
    return round(100 * float(value), 2)


def _percent_interval(interval) -> list[float] | None:
    return [_percent(value) for value in interval] if interval else None


# ----------------------------------------------------------------------------- table
def results_table(results: list, intervals: dict | None = None) -> str:
    """A Markdown table of ``EvalResult`` entries; ``intervals`` maps a result's key to its 95% interval (in %)."""
    if not results:
        return ""
    intervals = intervals or {}
    rows = ["| dataset | split | metric | value (%) | 95% CI |", "|---|---|---|---|---|"]
    for result in results:
        interval = intervals.get(_result_key(result))
        cell = f"{interval[0]:.2f} – {interval[1]:.2f}" if interval else "–"
        rows.append(f"| {result.dataset_name} | {result.dataset_split} | {result.metric_name} | "
                    f"{result.metric_value:.2f} | {cell} |")
    return "\n".join(rows)


def _result_key(result) -> tuple:
    """What makes two results the same measurement (a newer one replaces an older one)."""
    return (result.task_name, result.dataset_type, result.dataset_split, result.metric_type,
            result.metric_config or result.metric_name)


# ----------------------------------------------------------------------------- rendering
def render_model_card(report=None, recipe: dict | None = None, base_model: str | None = None,
                      repo_id: str | None = None, existing_results: list | None = None,
                      template: str | Path | None = None, noun: ObjectNoun | None = None) -> str:
    """The model card (YAML metadata with ``model-index`` + Markdown) rendered from the template.

    Args:
        report: an eval report dict, a list of them, or ``{"benchmarks": {name: report}}``; None for none.
        recipe: the training recipe (a dict), shown in the card.
        base_model: Hub id of the model it was trained from.
        repo_id: the repo the card is for (used in the loading snippet and as the model-index name).
        existing_results: ``EvalResult`` entries already published; kept unless ``report`` measures them again.
        template: another template file (default: the shipped copy of ``model_card.md``).
        noun: what the model's objects are called (its ``config.object_noun``; see :func:`checkpoint_noun`).
    """
    import yaml
    from huggingface_hub import ModelCard, ModelCardData

    entries = _result_entries(report)
    results = merge_results(existing_results or [], [result for result, _ in entries])
    intervals = {_result_key(result): interval for result, interval in entries if interval}
    model_name = repo_id.split("/")[-1] if repo_id else "finedefics"
    data = ModelCardData(
        library_name="transformers", pipeline_tag="image-text-to-text", license="apache-2.0", base_model=base_model,
        tags=list(CARD_TAGS), model_name=model_name, eval_results=results or None,
    )
    card = ModelCard.from_template(
        data, template_path=str(template or template_path()), title=_title(repo_id, noun),
        summary=_summary(base_model), repo_id=repo_id or "USER/NAME",
        results_table=results_table(results, intervals),
        recipe_yaml=yaml.safe_dump(recipe, sort_keys=False).strip() if recipe else "",
        noun=(noun or DEFAULT_NOUN).singular, open_set_question=open_set_question(noun or DEFAULT_NOUN),
        example_labels=json.dumps(_example_labels(report), ensure_ascii=False),
    )
    return card.content


def _title(repo_id: str | None, noun: ObjectNoun | None) -> str:
    """The repo's name; without one, what the model recognises (never "Finedefics: finedefics")."""
    if repo_id:
        return repo_id.split("/")[-1]
    return f"Finedefics: fine-grained {noun.singular} recognition" if noun else "Finedefics checkpoint"


def _example_labels(report) -> list[str]:
    """A few category names of the first evaluated benchmark, for the usage example."""
    for single in benchmark_reports(report):
        names = (single.get("benchmark_info") or {}).get("example_categories")
        if names:
            return list(names)
    return list(PLACEHOLDER_LABELS)


def checkpoint_noun(checkpoint_dir: str | Path) -> ObjectNoun | None:
    """The noun a local checkpoint was trained with (its ``config.json``), or None."""
    config = Path(checkpoint_dir) / "config.json"
    if not config.is_file():
        return None
    try:
        return ObjectNoun.from_config(json.loads(config.read_text(encoding="utf-8")))
    except (json.JSONDecodeError, ValueError) as error:
        raise ValueError(f"{config}: {error}") from error


def _summary(base_model: str | None) -> str:
    origin = f", fine-tuned from [`{base_model}`](https://huggingface.co/{base_model})" if base_model else ""
    return ("A multimodal LLM aligned for fine-grained visual recognition with attribute-augmented contrastive "
            f"learning and classification-centred instruction tuning (Finedefics, ICLR 2025){origin}.")


def merge_results(existing: list, new: list) -> list:
    """``existing`` results not measured again by ``new``, then ``new`` (in their order)."""
    measured = {_result_key(result) for result in new}
    return [result for result in existing if _result_key(result) not in measured] + list(new)


def write_model_card(checkpoint_dir: str | Path, report, recipe: dict | None = None, base_model: str | None = None,
                     repo_id: str | None = None) -> Path:
    """Render the card into ``checkpoint_dir/README.md``, keeping results an existing card already holds.

    Evaluating one benchmark at a time thus builds up a card with all of them; a benchmark and mode
    evaluated again replace their earlier numbers.
    """
    from huggingface_hub import ModelCard

    folder = Path(checkpoint_dir)
    if not folder.is_dir():
        raise FileNotFoundError(f"checkpoint folder not found: {folder}")
    readme = folder / "README.md"
    existing = []
    if readme.is_file():
        card = ModelCard.load(readme)
        existing = list(card.data.eval_results or [])
        base_model = base_model or card.data.base_model
    card = render_model_card(report, recipe, base_model, repo_id, existing, noun=checkpoint_noun(folder))
    readme.write_text(card, encoding="utf-8")
    logger.info("model card with %d result(s) written to %s", len(eval_results_from_report(report)), readme)
    return readme


__all__ = [
    "benchmark_reports", "checkpoint_noun", "eval_results_from_report", "merge_results", "render_model_card",
    "results_table", "template_path", "write_model_card",
]
