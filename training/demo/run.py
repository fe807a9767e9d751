"""``finedefics demo``: the paper's experiment in miniature, end to end on a CPU.

1. **Benchmark**: generate the synthetic fine-grained benchmark (or take ``--data DIR``).
2. **Base model**: what the paper found an MLLM already has before Finedefics: it sees and describes
   object attributes, and knows in words what each category looks like, but was never taught to name
   a category from its image (``base.py``). The default benchmark's base ships with the package
   (``demo_base/``, rebuilt bit for bit by ``--rebuild-base``); other data get one built on the spot.
3. **Premise**: measured on held-out images, not assumed (``premise.py``).
4. **Variants**, from the same base, with the same data and the same number of optimizer steps, for
   each seed:
   - ``finedefics``: stage I (attribute contrastive + description tuning), then stage II;
   - ``instruction_tuning``: stage II only (the paper's baseline);
   - ``no_hard_negatives``: stage I with in-batch negatives only, then stage II.
5. **Evaluation** of the base and every variant in the three scoring modes and open-set naming, with
   the rare-category slice; the same questions in the same option order for every model and seed.
6. **Report** (``demo_report.py``): premise, per-seed and mean tables, the Finedefics - baseline gap
   with its spread over seeds and its 95% interval over test images, training curves; and ``model/``,
   the Finedefics checkpoint of the first seed with its model card.

Every phase records its completion in ``state.json``; a rerun skips finished phases, and a training
phase interrupted mid-way resumes from its last Trainer checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

logger = logging.getLogger(__name__)

VARIANTS = ("finedefics", "instruction_tuning", "no_hard_negatives")
EVAL_MODES = ("generate", "likelihood", "embedding", "open_set")
EVAL_OPTION_SEED = 0  # the option order of every question: the same for every model and every training seed
SHIPPED_BASE = "demo_base"  # weights, config, processor; the model code is the installed package's
SCORES_FILE = "scores.json"
BUILD_FILE = "build.json"


@dataclass
class DemoPlan:
    """Sizes of one demo run; ``default_plan()`` and ``quick_plan()`` are the shipped ones.

    Fields before ``stage1_steps`` define the base model (see ``BASE_FIELDS``): a plan whose base fields
    equal those recorded with the shipped base starts from it instead of building one.
    """

    synth: dict = field(default_factory=dict)
    preset: str = "tiny"
    image_seq_len: int = 8
    base_seed: int = 0
    pool_size: int = 20000
    vision_steps: int = 3000
    vision_batch_size: int = 64
    vision_learning_rate: float = 2e-3
    caption_images: int = 6000
    choice_images: int = 3000
    base_steps: int = 2000
    base_batch_size: int = 16
    base_learning_rate: float = 1e-3
    knowledge_repeats: int = 20
    base_freeze_vision_tower: bool = True
    stage1_steps: int = 200
    stage2_steps: int = 200
    batch_size: int = 16
    learning_rate: float = 5e-4
    freeze_vision_tower: bool = True
    closed_set_ratio: float = 0.5
    eval_batch_size: int = 32
    premise_images: int = 560
    save_steps: int = 100


BASE_FIELDS = ("synth", "preset", "image_seq_len", "base_seed", "pool_size", "vision_steps", "vision_batch_size",
               "vision_learning_rate", "caption_images", "choice_images", "base_steps", "base_batch_size", "base_learning_rate",
               "knowledge_repeats", "base_freeze_vision_tower")


def default_plan() -> DemoPlan:
    return DemoPlan()


def quick_plan() -> DemoPlan:
    """A smoke test of every phase in about a minute: a micro model whose premise is NOT expected to hold."""
    return DemoPlan(
        synth=dict(num_genera=4, species_per_genus=3, train_per_category=16, rare_train_per_category=3,
                   validation_per_category=2, test_per_category=6),
        preset="micro", pool_size=1200, vision_steps=60, vision_batch_size=32, caption_images=400, choice_images=200,
        base_steps=120,
        base_batch_size=8, knowledge_repeats=2, stage1_steps=40, stage2_steps=40, batch_size=8, eval_batch_size=16,
        premise_images=24, save_steps=50,
    )


def apply_overrides(plan: DemoPlan, overrides: dict[str, str]) -> DemoPlan:
    """``{"stage1_steps": "600"}`` -> a plan with that field changed (values parsed as YAML scalars).

    Each value is checked against the field's type and range here, so a bad ``--set`` fails at once
    rather than minutes later, in the phase that first reads it.
    """
    import yaml

    known = set(DemoPlan.__dataclass_fields__)
    for key, value in overrides.items():
        if key not in known:
            raise ValueError(f"unknown demo setting {key!r}; known: {', '.join(sorted(known))}")
        value = yaml.safe_load(value) if isinstance(value, str) else value
        check_plan_value(key, value)
        setattr(plan, key, value)
    return plan


# Plan fields that may be 0 (every other int counts steps, images or a batch, and must be at least 1).
MAY_BE_ZERO = ("base_seed", "knowledge_repeats")
RATIOS = ("closed_set_ratio",)


def check_plan_value(key: str, value) -> None:
    """A clear error when ``value`` does not fit ``DemoPlan.<key>`` (its type, and its range where it has one)."""
    kind = DemoPlan.__dataclass_fields__[key].type  # a string: annotations are postponed in this module
    if kind == "int" and (isinstance(value, bool) or not isinstance(value, int)):
        raise ValueError(f"demo setting {key} must be an integer, got {value!r}")
    if kind == "float" and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise ValueError(f"demo setting {key} must be a number, got {value!r}")
    if kind == "bool" and not isinstance(value, bool):
        raise ValueError(f"demo setting {key} must be true or false, got {value!r}")
    if kind == "str" and not isinstance(value, str):
        raise ValueError(f"demo setting {key} must be a string, got {value!r}")
    if kind == "dict" and not isinstance(value, dict):
        raise ValueError(f"demo setting {key} must be a mapping, got {value!r}")
    if kind == "int" and value < (0 if key in MAY_BE_ZERO else 1):
        raise ValueError(f"demo setting {key} must be at least {0 if key in MAY_BE_ZERO else 1}, got {value}")
    if kind == "float" and key in RATIOS and not 0 <= value <= 1:
        raise ValueError(f"demo setting {key} must be between 0 and 1, got {value}")
    if kind == "float" and key not in RATIOS and value <= 0:
        raise ValueError(f"demo setting {key} must be positive, got {value}")


def base_recipe(plan: DemoPlan, data_identity: dict) -> dict:
    """What determines the base model: the base fields of the plan and the data it is built on."""
    return {"plan": {name: getattr(plan, name) for name in BASE_FIELDS}, "data": data_identity}


class Phases:
    """Runs named phases once, one console line per phase with its time; state.json makes reruns resume."""

    def __init__(self, output_dir: Path):
        self.state_file = output_dir / "state.json"
        self.state = json.loads(self.state_file.read_text()) if self.state_file.is_file() else {"done": {}}
        self.started = time.time()

    def done(self, name: str) -> bool:
        return name in self.state["done"]

    def run(self, name: str, function, *args, **kwargs):
        if self.done(name):
            logger.info("%-34s already done (%.0f s), skipped", name, self.state["done"][name])
            return None
        start = time.time()
        result = function(*args, **kwargs)
        elapsed = time.time() - start
        self.state["done"][name] = elapsed
        self.state_file.write_text(json.dumps(self.state, indent=2))
        logger.info("%-34s done in %5.0f s (total %4.0f s)", name, elapsed, time.time() - self.started)
        return result


# --------------------------------------------------------------------------- data
def make_data(data_dir: Path, plan: DemoPlan) -> None:
    from finedefics_data.synth import SynthConfig, generate_benchmark

    generate_benchmark(data_dir, SynthConfig(**plan.synth), progress=False, overwrite=True)


# --------------------------------------------------------------------------- base model
def shipped_base_dir() -> Path:
    # demo_base/ is package data of finedefics_training (see pyproject.toml), one level above this subpackage.
    return Path(str(resources.files("finedefics_training").joinpath(SHIPPED_BASE)))


def shipped_base_for(recipe: dict) -> Path | None:
    """The shipped base's folder if it was built from exactly this recipe, else None."""
    folder = shipped_base_dir()
    build_file = folder / BUILD_FILE
    if not build_file.is_file():
        return None
    build = json.loads(build_file.read_text())
    return folder if _canonical(build["recipe"]) == _canonical(recipe) else None


def _canonical(value) -> str:
    return json.dumps(value, sort_keys=True, default=list)


def weights_digest(folder: Path) -> str:
    """sha256 of a checkpoint's ``model.safetensors``: what "bit for bit" is checked on."""
    digest = hashlib.sha256()
    with open(folder / "model.safetensors", "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def copy_shipped_base(source: Path, final_dir: Path) -> None:
    if final_dir.exists():
        shutil.rmtree(final_dir)
    shutil.copytree(source, final_dir, ignore=shutil.ignore_patterns(BUILD_FILE))
    logger.info("base model: the shipped one (%s), built by `%s`", source,
                json.loads((source / BUILD_FILE).read_text())["command"])


def make_initial_model(data, model_dir: Path, plan: DemoPlan) -> None:
    """A tiny model whose tokenizer knows the data's words and whose config records the data's noun."""
    from ..init_model import init_model

    corpus = data.text_corpus() if data.synth_config is not None else None
    if model_dir.exists():
        shutil.rmtree(model_dir)  # left by an interrupted run (the phase was not recorded as done)
    init_model([data.training_dir], model_dir, preset=plan.preset, noun=data.noun, image_size=data.image_size,
               seed=plan.base_seed, image_seq_len=plan.image_seq_len, corpus=corpus)


def pretrain_vision_phase(data, model_dir: Path, work_dir: Path, plan: DemoPlan) -> dict:
    from modeling_finedefics import FinedeficsConfig

    from ..base import attribute_pool, pretrain_vision
    from finedefics_data.synth import ATTRIBUTES

    patch_size = FinedeficsConfig.from_pretrained(model_dir).vision_config.patch_size
    pool = attribute_pool(plan.pool_size, data.synth_config, patch_size=patch_size)
    accuracy = pretrain_vision(model_dir, work_dir, pool, ATTRIBUTES, plan.vision_steps, plan.vision_batch_size,
                               plan.vision_learning_rate, plan.base_seed, progress=PhaseProgress("base: vision pre-training"))
    (work_dir / "probe_accuracy.json").write_text(json.dumps(accuracy, indent=1))
    return accuracy


def make_base_dataset(data, output_dir: Path, plan: DemoPlan) -> None:
    """Captioning and description-choice rows (pool images; the training images without a pool) + text-only
    category knowledge (rare categories included)."""
    import datasets

    from finedefics_data.prompts import describe_instruction

    from ..base import attribute_pool, base_dataset, category_descriptions, description_choice_rows, knowledge_rows

    describe = describe_instruction(data.noun)
    if data.synth_config is not None:
        # Pool images after those of the vision pre-training: captioning and choices see new birds.
        captions = attribute_pool(plan.caption_images, data.synth_config, start=plan.pool_size)
        choices = attribute_pool(plan.choice_images, data.synth_config, start=plan.pool_size + plan.caption_images)
        image_rows = [(image, describe, caption) for image, caption in zip(captions.images, captions.captions)]
        image_rows += description_choice_rows(choices, data.noun, seed=plan.base_seed)
    else:
        image_rows = [(row["image"], describe, row["attribute"]) for row in data.splits["train"] if row.get("attribute")]
    descriptions = category_descriptions(data.splits["train"], data.categories)
    knowledge = knowledge_rows(descriptions, data.noun, plan.knowledge_repeats, data.negatives(), seed=plan.base_seed)
    datasets.DatasetDict({"train": base_dataset(image_rows, knowledge)}).save_to_disk(str(output_dir))
    logger.info("base data: %d image rows (captions, description choices) + %d text-only knowledge rows",
                len(image_rows), len(knowledge))


def build_base(data, runs_dir: Path, plan: DemoPlan, phases: Phases) -> Path:
    """Initial model -> vision pre-training (with a pool) -> captioning + knowledge stage; returns final/."""
    initial = runs_dir / "base-initial"
    phases.run("base: initial model", make_initial_model, data, initial, plan)
    if data.synth_config is not None:
        phases.run("base: vision pre-training", pretrain_vision_phase, data, initial, runs_dir / "base-vision", plan)
    phases.run("base: captioning + knowledge data", make_base_dataset, data, runs_dir / "base-data", plan)
    # The trainer warns that these rows hold no recognition question: for a base stage that is the point.
    trainer_logger = logging.getLogger("finedefics_training.trainer")
    level, trainer_logger.level = trainer_logger.level, logging.ERROR
    try:
        phases.run("base: captioning + knowledge", train_phase, initial, runs_dir / "base-data", runs_dir / "base",
                   plan, stage=2, steps=plan.base_steps, learning_rate=plan.base_learning_rate, seed=plan.base_seed,
                   batch_size=plan.base_batch_size, freeze_vision_tower=plan.base_freeze_vision_tower,
                   desc="base: captioning + knowledge")
    finally:
        trainer_logger.setLevel(level)
    return runs_dir / "base" / "final"


# --------------------------------------------------------------------------- training
class PhaseProgress:
    """One progress bar for a training phase (with the running loss) instead of Trainer's printed logs."""

    def __init__(self, desc: str):
        self.desc = desc

    def callback(self):
        from tqdm.auto import tqdm
        from transformers import TrainerCallback

        desc = self.desc

        class _Bar(TrainerCallback):
            bar = None

            def on_train_begin(self, args, state, control, **kwargs):
                self.bar = tqdm(total=state.max_steps, initial=state.global_step, desc=desc, unit="step", leave=False)

            def on_step_end(self, args, state, control, **kwargs):
                self.bar.update(state.global_step - self.bar.n)

            def on_log(self, args, state, control, logs=None, **kwargs):
                if self.bar is not None and logs and "loss" in logs:
                    self.bar.set_postfix(loss=f"{logs['loss']:.3f}")

            def on_train_end(self, args, state, control, **kwargs):
                self.bar.close()

        return _Bar()


def train_phase(model_dir: Path, data_dir: Path, output_dir: Path, plan: DemoPlan, stage: int, steps: int,
                learning_rate: float, seed: int, use_hard_negatives: bool = True, freeze_vision_tower: bool | None = None,
                batch_size: int | None = None, desc: str = "training") -> Path:
    """One full-fine-tuning stage through the same recipe code as `finedefics train`; returns final/."""
    from ..config import FinedeficsTrainingConfig
    from ..recipe import DataArguments, ModelArguments, run_stage

    if freeze_vision_tower is None:
        freeze_vision_tower = plan.freeze_vision_tower
    model_args = ModelArguments(model_name_or_path=str(model_dir), tuning="full", torch_dtype="float32",
                                freeze_vision_tower=freeze_vision_tower)
    args = FinedeficsTrainingConfig(
        output_dir=str(output_dir), stage=stage, max_steps=steps, per_device_train_batch_size=batch_size or plan.batch_size,
        learning_rate=learning_rate, lr_scheduler_type="cosine", warmup_steps=max(1, steps // 20),
        weight_decay=0.01, logging_steps=max(1, min(10, steps // 10)), save_strategy="steps",
        save_steps=plan.save_steps, save_total_limit=1, report_to="none", seed=seed, data_seed=seed,
        use_cpu=True, dataloader_num_workers=0, use_hard_negatives=use_hard_negatives, num_negatives=3,
        closed_set_ratio=plan.closed_set_ratio,
    )
    return run_stage(model_args, DataArguments(dataset_dir=str(data_dir)), args, progress=PhaseProgress(desc))


def train_variants(base: Path, data_dir: Path, runs_dir: Path, plan: DemoPlan, seed: int, phases: Phases) -> dict:
    """The three variants from ``base`` at equal optimizer steps; returns {variant: (final dir, stage dirs)}."""
    prefix = f"seed {seed}: "
    stage1 = dict(stage=1, steps=plan.stage1_steps, learning_rate=plan.learning_rate, seed=seed)
    stage2 = dict(stage=2, steps=plan.stage2_steps, learning_rate=plan.learning_rate, seed=seed)
    run = runs_dir / f"seed-{seed}"
    steps = [
        ("finedefics stage I", base, run / "finedefics-1", dict(stage1)),
        ("finedefics stage II", run / "finedefics-1" / "final", run / "finedefics-2", dict(stage2)),
        ("instruction tuning", base, run / "instruction-tuning",
         dict(stage2, steps=plan.stage1_steps + plan.stage2_steps)),
        ("no hard negatives stage I", base, run / "no-hn-1", dict(stage1, use_hard_negatives=False)),
        ("no hard negatives stage II", run / "no-hn-1" / "final", run / "no-hn-2", dict(stage2)),
    ]
    for name, source, output, kwargs in steps:
        phases.run(prefix + name, train_phase, source, data_dir, output, plan, desc=prefix + name, **kwargs)
    return {
        "finedefics": (run / "finedefics-2" / "final", [run / "finedefics-1", run / "finedefics-2"]),
        "instruction_tuning": (run / "instruction-tuning" / "final", [run / "instruction-tuning"]),
        "no_hard_negatives": (run / "no-hn-2" / "final", [run / "no-hn-1", run / "no-hn-2"]),
    }


# --------------------------------------------------------------------------- evaluation
def evaluate_models(models: dict[str, Path], data, split: str, report_dir: Path, plan: DemoPlan, desc: str) -> dict:
    """Evaluate each model in every mode on ``split``; writes report_dir/<model>/ and returns the reports."""
    from tqdm.auto import tqdm

    from finedefics_eval import evaluate_model, write_report
    from modeling_finedefics import FinedeficsForConditionalGeneration, FinedeficsProcessor

    benchmark = data.benchmark(split)
    reports = {}
    for name, folder in tqdm(models.items(), desc=desc, unit="model", leave=False):
        model = FinedeficsForConditionalGeneration.from_pretrained(folder).eval()
        processor = FinedeficsProcessor.from_pretrained(folder)
        report = evaluate_model(model, processor, benchmark, modes=EVAL_MODES, seed=EVAL_OPTION_SEED,
                                batch_size=plan.eval_batch_size, model_name=name, progress=False)
        write_report(dict(report), report_dir / name)
        scores = {key: value for key, value in report.items() if key != "predictions"}
        # Per-question correctness, kept for the paired comparison of models over seeds.
        scores["correct"] = {mode: [r["predicted"] == r["correct"] for r in records]
                             for mode, records in report["predictions"].items()}
        scores["rare_rows"] = [r["correct"] in (benchmark.rare_categories or ()) for r in
                               report["predictions"][EVAL_MODES[0]]]
        (report_dir / name / SCORES_FILE).write_text(json.dumps(scores, default=str))
        reports[name] = scores
    return reports


def load_scores(report_dir: Path, names) -> dict:
    return {name: json.loads((report_dir / name / SCORES_FILE).read_text()) for name in names}


def measure_premise(base: Path, data, split: str, plan: DemoPlan, path: Path) -> dict:
    """Object information extraction and category knowledge of the base model (see ``premise.py``)."""
    from modeling_finedefics import FinedeficsForConditionalGeneration, FinedeficsProcessor

    from ..premise import category_knowledge, multiple_choice_in_text, object_information_extraction

    model = FinedeficsForConditionalGeneration.from_pretrained(base).eval()
    processor = FinedeficsProcessor.from_pretrained(base)
    rows = data.spread_rows(split, plan.premise_images)
    premise = {
        "split": split,
        "object_information_extraction": object_information_extraction(
            model, processor, rows, data.categories, data.parse, data.noun, data.distinguishing(),
            batch_size=plan.eval_batch_size),
        "category_knowledge": category_knowledge(model, processor, data.categories, data.parse, data.rare,
                                                 batch_size=plan.eval_batch_size),
        "multiple_choice_in_text": multiple_choice_in_text(model, processor, data.categories, data.negatives(), data.noun,
                                                           data.rare, batch_size=plan.eval_batch_size),
    }
    path.write_text(json.dumps(premise, indent=1))
    return premise


# ------------------------------------------------------------------------------ export
def export_model(final_dir: Path, model_dir: Path, report_dir: Path) -> None:
    """The Finedefics checkpoint with its filled model card as README.md."""
    from finedefics_eval import load_report, write_model_card

    if model_dir.exists():
        shutil.rmtree(model_dir)
    shutil.copytree(final_dir, model_dir)
    report = load_report(report_dir / "finedefics" / "report.json")
    write_model_card(model_dir, report, recipe={"demo": "finedefics demo", "stages": "stage I + stage II"},
                     base_model=None)


# --------------------------------------------------------------------------------- run
def _quiet_libraries() -> None:
    """The demo prints one line per phase and one progress bar: silence the libraries' own chatter."""
    import datasets
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()  # weight loading / saving bars
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    for name in ("finedefics_training.recipe", "finedefics_training.trainer", "finedefics_data",
                 "finedefics_training.base", "finedefics_eval", "modeling_finedefics"):
        logging.getLogger(name).setLevel(logging.WARNING)
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)  # optional CPU kernels it cannot find; no QLoRA here


def run_demo(output_dir: str | Path, quick: bool = False, seeds: tuple[int, ...] = (0,), overrides: dict | None = None,
             data_dir: str | Path | None = None, rebuild_base: bool = False, eval_split: str = "test") -> str:
    """Run the whole demo into ``output_dir`` and return the comparison table (markdown).

    Args:
        quick: the smoke-test plan (micro model; the premise is not expected to hold).
        seeds: training seeds of the variants; the benchmark, the base and the evaluation questions are
            the same for all of them, so seeds differ only in the variants' training.
        overrides: fields of the plan to change (e.g. ``{"stage1_steps": 600}``).
        data_dir: a dataset folder from ``finedefics data`` instead of the embedded benchmark.
        rebuild_base: build the base model even when the shipped one fits, and say whether the
            result is bit for bit the shipped one.
        eval_split: ``test`` for the final table, ``validation`` while choosing settings.
    """
    from ..checkpoints import check_output_dir
    from ..demo_data import DemoData
    from ..demo_report import write_demo_report

    plan = apply_overrides(quick_plan() if quick else default_plan(), overrides or {})  # before anything runs
    check_output_dir(output_dir)
    _quiet_libraries()
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    phases = Phases(output_dir)
    runs_dir, report_dir = output_dir / "runs", output_dir / "report"
    report_dir.mkdir(exist_ok=True)

    if data_dir is None:
        data_dir = output_dir / "data"
        phases.run("benchmark", make_data, data_dir, plan)
    data = DemoData.open(Path(data_dir), output_dir / "data-prepared")
    if eval_split not in data.splits:
        raise ValueError(f"{data_dir} has no {eval_split!r} split to evaluate on (has {sorted(data.splits)})")

    recipe = base_recipe(plan, data.identity())
    shipped = None if rebuild_base else shipped_base_for(recipe)
    if shipped is not None:
        phases.run("base model (shipped)", copy_shipped_base, shipped, runs_dir / "base" / "final")
        base = runs_dir / "base" / "final"
    else:
        base = build_base(data, runs_dir, plan, phases)
        _record_build(base, recipe, phases, rebuild_base)

    premise = phases.run("premise (base model)", measure_premise, base, data, eval_split, plan, report_dir / "premise.json")
    premise = premise or json.loads((report_dir / "premise.json").read_text())
    phases.run("evaluation: base", evaluate_models, {"base": base}, data, eval_split, report_dir, plan,
               desc="evaluating the base")
    runs, scores = {}, load_scores(report_dir, ["base"])
    for seed in seeds:
        variants = train_variants(base, data.training_dir, runs_dir, plan, seed, phases)
        seed_dir = report_dir / f"seed-{seed}"
        phases.run(f"seed {seed}: evaluation", evaluate_models, {k: v[0] for k, v in variants.items()}, data,
                   eval_split, seed_dir, plan, desc=f"seed {seed}: evaluating")
        runs[seed] = {name: stage_dirs for name, (_, stage_dirs) in variants.items()}
        scores[seed] = load_scores(seed_dir, VARIANTS)
    table = write_demo_report(report_dir, premise, scores, runs, plan, phases, data, eval_split)
    first = seeds[0]
    phases.run("export model", export_model, runs_dir / f"seed-{first}" / "finedefics-2" / "final",
               output_dir / "model", report_dir / f"seed-{first}")
    return table


def _record_build(base: Path, recipe: dict, phases: Phases, rebuild_base: bool) -> None:
    """Write the base's build record; on ``--rebuild-base``, compare with the shipped base."""
    build = {"recipe": recipe, "sha256": weights_digest(base),
             "seconds": sum(v for k, v in phases.state["done"].items() if k.startswith("base:")),
             "command": "finedefics demo --rebuild-base"}
    (base / BUILD_FILE).write_text(json.dumps(build, indent=1, default=list))
    if not rebuild_base:
        return
    shipped = shipped_base_dir() / BUILD_FILE
    if not shipped.is_file():
        logger.info("rebuilt base %s; no shipped base to compare with", build["sha256"][:16])
        return
    shipped_build = json.loads(shipped.read_text())
    if _canonical(shipped_build["recipe"]) != _canonical(recipe):
        logger.info("rebuilt base %s with a recipe that differs from the shipped base's", build["sha256"][:16])
    elif shipped_build["sha256"] == build["sha256"]:
        logger.info("rebuilt base is bit for bit the shipped one (sha256 %s)", build["sha256"][:16])
    else:
        logger.warning("rebuilt base differs from the shipped one (sha256 %s vs %s): same recipe, other bits "
                       "(another CPU kind or thread count?)", build["sha256"][:16], shipped_build["sha256"][:16])
