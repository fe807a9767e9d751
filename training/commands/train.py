"""``finedefics train --config recipe.yaml [--key value ...]``: one training stage, TRL-style arguments."""

from __future__ import annotations


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "train",
        help="run one Finedefics training stage from a YAML recipe (TRL argument parser)",
        description=(
            "Run one stage (--stage 1: attribute contrastive + description tuning; --stage 2: recognition "
            "tuning). Arguments are FinedeficsTrainingConfig (an SFTConfig), ModelArguments and DataArguments "
            "fields, from --config recipe.yaml and/or the command line (the command line wins). Launch with "
            "`accelerate launch -m finedefics_training.cli train ...` or torchrun for several processes."
        ),
        add_help=False,
    )
    parser.add_argument("-h", "--help", action="store_true", help="show the recipe fields and exit")
    parser.set_defaults(func=run, pass_through=True)


def parse_recipe(argv: list[str]):
    """(ModelArguments, DataArguments, FinedeficsTrainingConfig) from YAML + command line; unknown keys fail."""
    from trl import TrlParser

    from ..config import FinedeficsTrainingConfig
    from ..recipe import DataArguments, ModelArguments

    parser = TrlParser((ModelArguments, DataArguments, FinedeficsTrainingConfig), prog="finedefics train")
    return parser, parser.parse_args_and_config(argv)


def run(args) -> int:
    from ..recipe import run_stage

    if args.help:
        parse_recipe(["--help"])
        return 0
    _, (model_args, data_args, training_args) = parse_recipe(args.recipe_args)
    final_dir = run_stage(model_args, data_args, training_args)
    print(f"stage {training_args.stage} checkpoint written to {final_dir}")
    return 0
