"""``finedefics two-stage --config recipe.yaml``: stage I, merge, stage II, each stage a loadable checkpoint."""

from __future__ import annotations

import os
import tempfile

DESCRIPTION = (
    "Stage I (attribute contrastive + description tuning), merge the adapter, then stage II "
    "(recognition tuning) from the merged stage I checkpoint. Outputs OUTPUT_DIR/stage1/final and "
    "OUTPUT_DIR/stage2/final. Each stage may have its own data: stage1_dataset_dir (e.g. from pretrain.csv) "
    "and stage2_dataset_dir (e.g. from finetune.csv), both defaulting to dataset_dir. --dry-run prints both stages' plans and memory estimates without training. Other fields prefixed "
    "with stage2_ (e.g. stage2_learning_rate, stage2_max_steps) override stage II only. Both stages' data are "
    "summarised and checked before stage I starts."
)


def register(subparsers) -> None:
    parser = subparsers.add_parser("two-stage", help="run the full Finedefics recipe: stage I, merge, stage II",
                                   description=DESCRIPTION, add_help=False)
    parser.add_argument("-h", "--help", action="store_true", help="show the recipe fields and exit")
    parser.set_defaults(func=run, pass_through=True)


def split_stage2_overrides(argv: list[str], scratch_dir: str, keep: frozenset[str] = frozenset()) -> tuple[list[str], dict]:
    """Pull `stage2_*` keys out of the YAML config and command line; they apply to stage II only.

    A YAML config that held such keys is rewritten without them into ``scratch_dir`` (which the caller
    removes). Keys named in ``keep`` (such as ``stage2_dataset_dir``, a recipe field of its own) stay.
    """
    import yaml

    argv = list(argv)
    overrides: dict = {}
    if "--config" in argv:
        position = argv.index("--config") + 1
        with open(argv[position]) as handle:
            config = yaml.safe_load(handle) or {}
        overrides = {key[len("stage2_"):]: config.pop(key) for key in list(config)
                     if key.startswith("stage2_") and key not in keep}
        if overrides:
            stripped = os.path.join(scratch_dir, "stage1-recipe.yaml")
            with open(stripped, "w") as handle:
                yaml.safe_dump(config, handle)
            argv[position] = stripped
    rest, i = [], 0
    while i < len(argv):
        key, equals, value = argv[i][2:].partition("=") if argv[i].startswith("--") else ("", "", "")
        if key.startswith("stage2_") and key not in keep:
            overrides[key[len("stage2_"):]] = yaml.safe_load(value if equals else argv[i + 1])
            i += 1 if equals else 2
            continue
        rest.append(argv[i])
        i += 1
    return rest, overrides


def run(args) -> int:
    from dataclasses import fields, replace

    from ..recipe import DataArguments, run_two_stage
    from .train import parse_recipe, print_recipe_help, take_flag

    if args.help:
        print_recipe_help("finedefics two-stage", DESCRIPTION)
        return 0
    data_fields = frozenset(field.name for field in fields(DataArguments))
    argv, dry_run = take_flag(args.recipe_args, "--dry-run")
    if dry_run:
        argv += ["--use_cpu", "true"]  # plan a GPU recipe on any machine: nothing runs on a device
    with tempfile.TemporaryDirectory(prefix="finedefics-two-stage-") as scratch:
        argv, overrides = split_stage2_overrides(argv, scratch, keep=data_fields)
        parser, (model_args, data_args, training_args) = parse_recipe(argv, prog="finedefics two-stage")
    known = set(type(training_args).__dataclass_fields__)
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"unknown stage2_ override(s) {unknown}: not FinedeficsTrainingConfig fields")
    if dry_run:
        from ..dry_run import print_plan

        print_plan(model_args, replace(training_args, stage=1))
        print_plan(model_args, replace(training_args, stage=2, **overrides))
        return 0
    stage1_dir, stage2_dir = run_two_stage(model_args, data_args, training_args, overrides)
    print(f"stage I checkpoint:  {stage1_dir}\nstage II checkpoint: {stage2_dir}")
    return 0
