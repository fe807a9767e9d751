"""``finedefics demo``: the paper's experiment in miniature, end to end on a CPU.

1. Generate the synthetic fine-grained benchmark (``data/``).
2. Build a tokenizer and a tiny Finedefics model, and give it what the paper found an MLLM already has
   before Finedefics (``base``): object information extraction (describing a training image's
   attributes) and category knowledge (text only: what each category looks like in words, in both
   directions, rare categories included). This base stage stands in for Idefics2's own pre-training.
3. From the same base, with the same data and the same number of optimizer steps, train
   - ``finedefics``: stage I (attribute contrastive + description tuning), then stage II;
   - ``instruction_tuning``: stage II only (the paper's baseline);
   - ``no_hard_negatives``: stage I with in-batch negatives only, then stage II.
4. Evaluate the base and every variant on the held-out test split in the three scoring modes (and
   open-set naming), with the rare-category slice.
5. Write ``model/`` (the Finedefics checkpoint with its model card), ``report/`` (report.json,
   report.md, plots, one evaluation folder per model) and print the comparison table.

Every phase records its completion in ``state.json``; a rerun skips finished phases, and a training
phase interrupted mid-way resumes from its last Trainer checkpoint.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

logger = logging.getLogger(__name__)

VARIANTS = ("finedefics", "instruction_tuning", "no_hard_negatives")
EVAL_MODES = ("generate", "likelihood", "embedding", "open_set")
KNOWLEDGE_QUESTION = "What does a {name} look like?"
REVERSE_KNOWLEDGE_QUESTION = "Which bird is {description}?"


@dataclass
class DemoPlan:
    """Sizes of one demo run; ``default_plan()`` and ``quick_plan()`` are the shipped ones."""

    synth: dict = field(default_factory=dict)
    preset: str = "tiny"
    base_steps: int = 900
    stage1_steps: int = 300
    stage2_steps: int = 300
    batch_size: int = 16
    base_learning_rate: float = 1e-3
    learning_rate: float = 5e-4
    knowledge_repeats: int = 4
    eval_batch_size: int = 16
    save_steps: int = 100
    freeze_vision_tower: bool = True
    seed: int = 0


def default_plan(seed: int = 0) -> DemoPlan:
    return DemoPlan(seed=seed)


def quick_plan(seed: int = 0) -> DemoPlan:
    return DemoPlan(
        synth=dict(num_genera=4, species_per_genus=3, train_per_category=16, rare_train_per_category=3,
                   test_per_category=6),
        preset="micro", base_steps=150, stage1_steps=40, stage2_steps=40, batch_size=8, knowledge_repeats=2,
        eval_batch_size=16, save_steps=50, seed=seed,
    )


class Phases:
    """Runs named phases once, logging one line per phase with its elapsed time; state.json makes reruns resume."""

    def __init__(self, output_dir: Path):
        self.state_file = output_dir / "state.json"
        self.state = json.loads(self.state_file.read_text()) if self.state_file.is_file() else {"done": {}}
        self.started = time.time()

    def run(self, name: str, function, *args, **kwargs):
        if name in self.state["done"]:
            logger.info("[demo] %-28s already done (%.1fs), skipped", name, self.state["done"][name])
            return None
        logger.info("[demo] %-28s started", name)
        start = time.time()
        result = function(*args, **kwargs)
        elapsed = time.time() - start
        self.state["done"][name] = elapsed
        self.state_file.write_text(json.dumps(self.state, indent=2))
        logger.info("[demo] %-28s done in %.1fs (total %.1fs)", name, elapsed, time.time() - self.started)
        return result


# --------------------------------------------------------------------------- phases
def make_data(data_dir: Path, plan: DemoPlan) -> None:
    from .data.synth import SynthConfig, generate_benchmark

    generate_benchmark(data_dir, SynthConfig(seed=plan.seed, **plan.synth), overwrite=True)


def make_initial_model(data_dir: Path, model_dir: Path, plan: DemoPlan) -> None:
    from modeling_finedefics.tiny import build_tiny_model, build_tiny_processor, build_tiny_tokenizer

    from .data.synth import SynthConfig, text_corpus

    image_size = SynthConfig(**plan.synth).image_size
    processor = build_tiny_processor(build_tiny_tokenizer(text_corpus(data_dir)), image_size=image_size)
    model = build_tiny_model(processor, preset=plan.preset, seed=plan.seed)
    model.save_pretrained(model_dir)
    processor.save_pretrained(model_dir)
    logger.info("initial %s model: %.2fM parameters", plan.preset, sum(p.numel() for p in model.parameters()) / 1e6)


def make_base_dataset(data_dir: Path, output_dir: Path, plan: DemoPlan) -> None:
    """Captioning rows on the training images + text-only category knowledge rows (rare included)."""
    import datasets

    from .data.synth import load_benchmark, load_categories

    train = load_benchmark(data_dir)["train"]
    captions = train.select_columns(["image", "category", "attribute"]).rename_column("attribute", "answer")
    question = "Describe the attributes of the bird in the image."
    captions = captions.add_column("question", [question] * len(captions))
    knowledge = []
    for category in load_categories(data_dir):
        description = category["description"]
        knowledge.append({"category": category["name"], "answer": description,
                          "question": KNOWLEDGE_QUESTION.format(name=category["name"])})
        knowledge.append({"category": category["name"], "answer": category["name"],
                          "question": REVERSE_KNOWLEDGE_QUESTION.format(description=description.rstrip("."))})
    knowledge = datasets.Dataset.from_list(knowledge * plan.knowledge_repeats)
    knowledge = knowledge.add_column("image", [None] * len(knowledge)).cast_column("image", captions.features["image"])
    combined = datasets.concatenate_datasets([captions, knowledge.select_columns(captions.column_names)])
    combined = combined.add_column("example_id", list(range(len(combined))))
    datasets.DatasetDict({"train": combined}).save_to_disk(str(output_dir))
    logger.info("base data: %d captioning rows + %d text-only knowledge rows", len(captions), len(knowledge))


def train_phase(model_dir: Path, data_dir: Path, output_dir: Path, plan: DemoPlan, stage: int, steps: int,
                learning_rate: float, use_hard_negatives: bool = True, freeze_vision_tower: bool | None = None) -> Path:
    """One full-fine-tuning stage through the same recipe code as `finedefics train`; returns final/."""
    from .config import FinedeficsTrainingConfig
    from .recipe import DataArguments, ModelArguments, run_stage

    if freeze_vision_tower is None:
        freeze_vision_tower = plan.freeze_vision_tower
    model_args = ModelArguments(model_name_or_path=str(model_dir), tuning="full", torch_dtype="float32",
                                freeze_vision_tower=freeze_vision_tower)
    args = FinedeficsTrainingConfig(
        output_dir=str(output_dir), stage=stage, max_steps=steps, per_device_train_batch_size=plan.batch_size,
        learning_rate=learning_rate, lr_scheduler_type="cosine", warmup_steps=max(1, steps // 20),
        weight_decay=0.01, logging_steps=max(1, min(10, steps // 10)), save_strategy="steps",
        save_steps=plan.save_steps, save_total_limit=1, report_to="none", seed=plan.seed, data_seed=plan.seed,
        use_cpu=True, dataloader_num_workers=0, use_hard_negatives=use_hard_negatives, num_negatives=3,
    )
    return run_stage(model_args, DataArguments(dataset_dir=str(data_dir)), args)


def evaluate_models(models: dict[str, Path], data_dir: Path, report_dir: Path, plan: DemoPlan) -> dict:
    """Evaluate each model in every mode; writes report_dir/<model>/ and returns the reports."""
    from modeling_finedefics import FinedeficsForConditionalGeneration, FinedeficsProcessor

    from finedefics_eval import evaluate_model, load_benchmark, write_report

    benchmark = load_benchmark(str(data_dir), split="test")
    reports = {}
    for name, folder in models.items():
        model = FinedeficsForConditionalGeneration.from_pretrained(folder).eval()
        processor = FinedeficsProcessor.from_pretrained(folder)
        report = evaluate_model(model, processor, benchmark, modes=EVAL_MODES, seed=plan.seed,
                                batch_size=plan.eval_batch_size, model_name=name)
        write_report(dict(report), report_dir / name)
        reports[name] = {key: value for key, value in report.items() if key != "predictions"}
    return reports


# ------------------------------------------------------------------------- summary
def comparison_rows(reports: dict) -> list[dict]:
    rows = []
    for name, report in reports.items():
        row = {"model": name}
        for mode, metrics in report["modes"].items():
            row[mode] = metrics["accuracy"]
            rare = (metrics.get("rare_vs_common") or {}).get("rare")
            if rare:
                row[f"{mode}_rare"] = rare["accuracy"]
        embedding = report["modes"].get("embedding", {})
        for key in ("top1_all", "top5_all"):
            if key in embedding:
                row[f"embedding_{key}"] = embedding[key]
        rows.append(row)
    return rows


def comparison_table(rows: list[dict]) -> str:
    columns = ["generate", "likelihood", "embedding", "open_set", "embedding_top1_all",
               "generate_rare", "likelihood_rare", "embedding_rare"]
    headers = ["model", "generate", "likelihood", "embedding (4-way)", "open-set", "embedding top-1 (all)",
               "generate rare", "likelihood rare", "embedding rare"]
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for row in rows:
        cells = [row["model"]] + [f"{100 * row[c]:.1f}" if row.get(c) is not None else "-" for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


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
        history = json.loads((stage_dir / "log_history.json").read_text())
        steps = [entry["step"] for entry in history if "step" in entry]
        entries += [{**entry, "step": entry["step"] + offset} for entry in history if "loss" in entry]
        offset += max(steps, default=0)
    return entries


def write_demo_report(report_dir: Path, reports: dict, runs: dict, plan: DemoPlan, phases: Phases) -> str:
    rows = comparison_rows(reports)
    table = comparison_table(rows)
    curves = training_curves(runs, report_dir / "training_curves.png")
    payload = {
        "what": "finedefics demo: attribute-augmented alignment vs instruction tuning on the synthetic benchmark",
        "base_model_note": ("The 'base' model is a tiny Finedefics model given object-description and "
                            "text-only category knowledge by a short base stage; it stands in for "
                            "Idefics2's own pre-training and is shared by every variant."),
        "plan": asdict(plan),
        "comparison": rows,
        "models": reports,
        "phase_seconds": phases.state["done"],
        "training_curves": {name: history for name, history in curves.items()},
    }
    (report_dir / "report.json").write_text(json.dumps(payload, indent=2, default=str))
    steps = f"{plan.stage1_steps} stage I + {plan.stage2_steps} stage II"
    lines = [
        "# Finedefics demo report", "",
        f"Synthetic fine-grained benchmark, {plan.preset} model, seed {plan.seed}. Every variant starts from "
        f"the same base model and takes the same number of optimizer steps ({steps}; the instruction-tuning "
        f"baseline runs {plan.stage1_steps + plan.stage2_steps} stage II steps) on the same training images.",
        "", payload["base_model_note"], "",
        "Accuracy (%) on the held-out test split; 4-way multiple choice with hard-negative options unless "
        "noted; *rare* = categories with few training images.", "", table, "",
        "![training curves](training_curves.png)", "",
        "Per-model evaluation reports (per-class accuracy, confused pairs, rare vs common, intervals):", "",
    ]
    lines += [f"- [{name}]({name}/report.md)" for name in reports]
    lines += ["", "Phase times (s): " + ", ".join(f"{k} {v:.0f}" for k, v in phases.state["done"].items())]
    (report_dir / "report.md").write_text("\n".join(lines) + "\n")
    return table


def export_model(final_dir: Path, model_dir: Path, report_dir: Path) -> None:
    """The Finedefics checkpoint with its filled model card as README.md."""
    from finedefics_eval import load_report, write_model_card

    if model_dir.exists():
        shutil.rmtree(model_dir)
    shutil.copytree(final_dir, model_dir)
    report = load_report(report_dir / "finedefics" / "report.json")
    write_model_card(model_dir, report, recipe={"demo": "finedefics demo", "stages": "stage I + stage II"},
                     base_model=None)


# ------------------------------------------------------------------------------ run
def apply_overrides(plan: DemoPlan, overrides: dict[str, str]) -> DemoPlan:
    """``{"stage1_steps": "600"}`` -> a plan with that field changed (values parsed as YAML scalars)."""
    import yaml

    known = set(DemoPlan.__dataclass_fields__)
    for key, value in overrides.items():
        if key not in known:
            raise ValueError(f"unknown demo setting {key!r}; known: {', '.join(sorted(known))}")
        setattr(plan, key, yaml.safe_load(value) if isinstance(value, str) else value)
    return plan


def run_demo(output_dir: str | Path, quick: bool = False, seed: int = 0, overrides: dict | None = None) -> str:
    """Run the whole demo into ``output_dir`` and return the comparison table (markdown).

    ``overrides`` change fields of the plan (e.g. ``{"stage1_steps": 600}``) for experiments; the
    shipped plans are ``default_plan()`` and ``quick_plan()``.
    """
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    plan = apply_overrides(quick_plan(seed) if quick else default_plan(seed), overrides or {})
    phases = Phases(output_dir)
    data_dir, runs_dir, report_dir = output_dir / "data", output_dir / "runs", output_dir / "report"
    report_dir.mkdir(exist_ok=True)

    phases.run("generate benchmark", make_data, data_dir, plan)
    phases.run("initial model", make_initial_model, data_dir, runs_dir / "initial", plan)
    phases.run("base data", make_base_dataset, data_dir, runs_dir / "base-data", plan)
    phases.run("base stage", train_phase, runs_dir / "initial", runs_dir / "base-data", runs_dir / "base", plan,
               stage=2, steps=plan.base_steps, learning_rate=plan.base_learning_rate, freeze_vision_tower=False)
    base = runs_dir / "base" / "final"
    stage1_kwargs = dict(stage=1, steps=plan.stage1_steps, learning_rate=plan.learning_rate)
    stage2_kwargs = dict(stage=2, steps=plan.stage2_steps, learning_rate=plan.learning_rate)
    phases.run("finedefics stage I", train_phase, base, data_dir, runs_dir / "finedefics-1", plan, **stage1_kwargs)
    phases.run("finedefics stage II", train_phase, runs_dir / "finedefics-1" / "final", data_dir,
               runs_dir / "finedefics-2", plan, **stage2_kwargs)
    phases.run("instruction tuning", train_phase, base, data_dir, runs_dir / "instruction-tuning", plan,
               stage=2, steps=plan.stage1_steps + plan.stage2_steps, learning_rate=plan.learning_rate)
    phases.run("no hard negatives stage I", train_phase, base, data_dir, runs_dir / "no-hn-1", plan,
               use_hard_negatives=False, **stage1_kwargs)
    phases.run("no hard negatives stage II", train_phase, runs_dir / "no-hn-1" / "final", data_dir,
               runs_dir / "no-hn-2", plan, **stage2_kwargs)

    models = {
        "base": base,
        "finedefics": runs_dir / "finedefics-2" / "final",
        "instruction_tuning": runs_dir / "instruction-tuning" / "final",
        "no_hard_negatives": runs_dir / "no-hn-2" / "final",
    }
    reports = phases.run("evaluation", evaluate_models, models, data_dir, report_dir, plan)
    if reports is None:  # evaluated in an earlier run
        reports = {name: json.loads((report_dir / name / "report.json").read_text()) for name in models}
    runs = {
        "finedefics": [runs_dir / "finedefics-1", runs_dir / "finedefics-2"],
        "instruction_tuning": [runs_dir / "instruction-tuning"],
        "no_hard_negatives": [runs_dir / "no-hn-1", runs_dir / "no-hn-2"],
    }
    table = write_demo_report(report_dir, reports, runs, plan, phases)
    phases.run("export model", export_model, models["finedefics"], output_dir / "model", report_dir)
    return table
