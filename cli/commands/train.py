"""``finedefics train --config recipe.yaml [--key value ...]``: one training stage, TRL-style arguments."""

from __future__ import annotations

DESCRIPTION = (
    "Run one stage (--stage 1: attribute contrastive + description tuning; --stage 2: recognition "
    "tuning). Arguments are FinedeficsTrainingConfig (an SFTConfig), ModelArguments and DataArguments "
    "fields, from --config recipe.yaml and/or the command line (the command line wins). Launch with "
    "`accelerate launch -m finedefics_cli train ...` or torchrun for several processes. "
    "--dry-run builds the model on the meta device from its config, applies the tuning, prints trainable "
    "parameters and a per-device memory estimate, and exits without training; with --accelerate-config "
    "CONFIG.yaml (e.g. training/accelerate_configs/deepspeed_zero3.yaml or fsdp2.yaml) the estimate shards "
    "weights, gradients and optimizer state as that launch would."
)
CONFIG_HELP = "YAML recipe whose keys are the fields listed here (the command line overrides them)"


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "train", help="run one Finedefics training stage from a YAML recipe (TRL argument parser)",
        description=DESCRIPTION, add_help=False,
    )
    parser.add_argument("-h", "--help", action="store_true", help="show the recipe fields and exit")
    parser.set_defaults(func=run, pass_through=True)


def recipe_parser(prog: str = "finedefics train", description: str = DESCRIPTION):
    """TRL's parser over (ModelArguments, DataArguments, FinedeficsTrainingConfig).

    Parsing the training config starts ``accelerate launch``'s process group (DeepSpeed's, under a DeepSpeed
    config), so what DeepSpeed needs changed for this model is changed first (``engines.prepare_engine``).
    """
    from trl import TrlParser

    from finedefics_training.config import FinedeficsTrainingConfig
    from finedefics_training.engines import prepare_engine
    from finedefics_training.recipe import DataArguments, ModelArguments

    prepare_engine()
    return TrlParser((ModelArguments, DataArguments, FinedeficsTrainingConfig), prog=prog, description=description,
                     usage=f"{prog} [--config RECIPE.yaml] [--FIELD VALUE ...]")


def print_recipe_help(prog: str, description: str) -> None:
    """The command's own help: its usage and description, ``--config``, then every recipe field."""
    parser = recipe_parser(prog, f"{description} Recipe file: --config RECIPE.yaml, a {CONFIG_HELP}.")
    # Listed too, though TRL's parser takes --config out of the arguments before parsing them.
    parser.add_argument("--config", metavar="RECIPE.yaml", help=CONFIG_HELP)
    parser.print_help()


def parse_recipe(argv: list[str], prog: str = "finedefics train"):
    """(ModelArguments, DataArguments, FinedeficsTrainingConfig) from YAML + command line; unknown keys fail."""
    parser = recipe_parser(prog)
    return parser, parser.parse_args_and_config(argv)


def take_dry_run(argv: list[str]) -> tuple[list[str], bool]:
    """``argv`` without ``--dry-run`` (a switch the recipe parser does not know), and whether it was there.

    A dry run plans a GPU recipe on any machine (nothing runs on a device), so it parses with ``use_cpu``.
    """
    dry_run = "--dry-run" in argv
    argv = [item for item in argv if item != "--dry-run"]
    return (argv + ["--use_cpu", "true"] if dry_run else argv), dry_run


def take_accelerate_config(argv: list[str], dry_run: bool) -> tuple[list[str], str | None]:
    """``argv`` without ``--accelerate-config PATH`` (the launch a dry run plans for), and PATH."""
    rest, path, position = [], None, 0
    while position < len(argv):
        key, equals, value = argv[position].partition("=")
        if key in ("--accelerate-config", "--accelerate_config"):
            if not equals:
                if position + 1 >= len(argv):
                    raise ValueError(f"{key} needs a path: an accelerate config (training/accelerate_configs/)")
                value, position = argv[position + 1], position + 1
            path = value
        else:
            rest.append(argv[position])
        position += 1
    if path is not None and not dry_run:
        raise ValueError("--accelerate-config is for --dry-run; a run takes the config from accelerate launch "
                         "--config_file")
    return rest, path


def planned_engine(accelerate_config: str | None, training_args):
    """The engine a dry run plans for: the given accelerate config's, else the launch's (None: one process)."""
    from finedefics_training.engines import engine_from_accelerate_config, engine_of

    engine = engine_from_accelerate_config(accelerate_config) if accelerate_config else engine_of(training_args)
    return None if engine.name == "single" else engine


def run(args) -> int:
    from finedefics_training.recipe import run_stage

    if args.help:
        print_recipe_help("finedefics train", DESCRIPTION)
        return 0
    argv, dry_run = take_dry_run(args.recipe_args)
    argv, accelerate_config = take_accelerate_config(argv, dry_run)
    _, (model_args, data_args, training_args) = parse_recipe(argv)
    if dry_run:
        from finedefics_training.dry_run import print_plan

        print_plan(model_args, training_args, planned_engine(accelerate_config, training_args))
        return 0
    from finedefics_training.dry_run import check_engine_memory

    check_engine_memory(model_args, training_args)  # CPU offload against this machine's memory, before weights load
    final_dir = run_stage(model_args, data_args, training_args)
    print(f"stage {training_args.stage} checkpoint written to {final_dir}")
    return 0
