"""``finedefics two-stage --config recipe.yaml``: stage I, merge, stage II, each stage a loadable checkpoint."""

from __future__ import annotations

from .train import recipe_parser

DESCRIPTION = (
    "Stage I (attribute contrastive + description tuning), merge the adapter, then stage II "
    "(recognition tuning) from the merged stage I checkpoint. Outputs OUTPUT_DIR/stage1/final and "
    "OUTPUT_DIR/stage2/final. Each stage may have its own data: stage1_dataset_dir (e.g. from pretrain.csv) "
    "and stage2_dataset_dir (e.g. from finetune.csv), both defaulting to dataset_dir. --dry-run prints both stages' "
    "plans and memory estimates without training (--accelerate-config CONFIG.yaml: for that launch). Other fields "
    "prefixed with stage2_ (e.g. stage2_learning_rate, "
    "stage2_max_steps) override stage II only. Both stages' data are summarised and checked before stage I starts."
)


def register(subparsers) -> None:
    parser = subparsers.add_parser("two-stage", help="run the full Finedefics recipe: stage I, merge, stage II",
                                   description=DESCRIPTION, add_help=False)
    parser.add_argument("-h", "--help", action="store_true", help="show the recipe fields and exit")
    parser.set_defaults(func=run, pass_through=True)


def stage2_overrides(remaining: list[str]) -> dict:
    """The ``--stage2_<field> VALUE`` pairs TRL's parser left over, as typed ``FinedeficsTrainingConfig`` values.

    ``remaining`` is what ``TrlParser.parse_args_and_config(..., return_remaining_strings=True)`` could not
    place: a recipe's ``stage2_*`` keys and the command line's. Each value is converted by the parser
    action of the field it overrides, exactly as stage I's value of that field was.
    """
    from dataclasses import fields

    from finedefics_training.config import FinedeficsTrainingConfig

    overridable = {field.name for field in fields(FinedeficsTrainingConfig)}
    actions = {action.dest: action for action in recipe_parser("finedefics two-stage")._actions
               if action.dest in overridable}
    overrides, position = {}, 0
    while position < len(remaining):
        key, equals, value = remaining[position].removeprefix("--").partition("=")
        name = key.removeprefix("stage2_")
        if not remaining[position].startswith("--stage2_") or name not in actions:
            raise ValueError(f"unknown argument {remaining[position]!r}: not a recipe field, nor stage2_ followed "
                             "by a FinedeficsTrainingConfig field")
        if not equals:
            if position + 1 >= len(remaining):
                raise ValueError(f"{remaining[position]} needs a value")
            value, position = remaining[position + 1], position + 1
        position += 1
        overrides[name] = _typed(actions[name], value)
    return overrides


def _typed(action, value: str):
    """``value`` as the field's parser would read it (a YAML value that is not a string arrives as its str())."""
    if value == "None":
        return None
    converted = action.type(value) if action.type else value
    if action.nargs in ("+", "*") and not isinstance(converted, list):
        import yaml

        parsed = yaml.safe_load(value)
        converted = [action.type(item) if action.type else item for item in parsed] if isinstance(parsed, list) \
            else [converted]
    return converted


def run(args) -> int:
    from dataclasses import replace

    from finedefics_training.recipe import run_two_stage

    from .train import planned_engine, print_recipe_help, take_accelerate_config, take_dry_run

    if args.help:
        print_recipe_help("finedefics two-stage", DESCRIPTION)
        return 0
    argv, dry_run = take_dry_run(args.recipe_args)
    argv, accelerate_config = take_accelerate_config(argv, dry_run)
    *recipe, remaining = recipe_parser("finedefics two-stage").parse_args_and_config(
        argv, return_remaining_strings=True)
    model_args, data_args, training_args = recipe
    overrides = stage2_overrides(remaining)
    if dry_run:
        from finedefics_training.dry_run import print_plan

        engine = planned_engine(accelerate_config, training_args)
        print_plan(model_args, replace(training_args, stage=1), engine)
        print_plan(model_args, replace(training_args, stage=2, **overrides), engine)
        return 0
    from finedefics_training.dry_run import check_engine_memory

    check_engine_memory(model_args, training_args)  # CPU offload against this machine's memory, before weights load
    stage1_dir, stage2_dir = run_two_stage(model_args, data_args, training_args, overrides)
    print(f"stage I checkpoint:  {stage1_dir}\nstage II checkpoint: {stage2_dir}")
    return 0
