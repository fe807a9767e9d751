"""``finedefics two-stage --config recipe.yaml``: stage I, merge, stage II, each stage a loadable checkpoint."""

from __future__ import annotations


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "two-stage",
        help="run the full Finedefics recipe: stage I, merge, stage II",
        description=(
            "Stage I (attribute contrastive + description tuning), merge the adapter, then stage II "
            "(recognition tuning) from the merged stage I checkpoint. Outputs OUTPUT_DIR/stage1/final and "
            "OUTPUT_DIR/stage2/final. Fields prefixed with stage2_ in the recipe (e.g. stage2_learning_rate, "
            "stage2_per_device_train_batch_size) override stage II only."
        ),
        add_help=False,
    )
    parser.add_argument("-h", "--help", action="store_true", help="show the recipe fields and exit")
    parser.set_defaults(func=run, pass_through=True)


def split_stage2_overrides(argv: list[str]) -> tuple[list[str], dict]:
    """Pull `stage2_*` keys out of the YAML config and command line; they apply to stage II only."""
    import yaml

    argv = list(argv)
    overrides: dict = {}
    if "--config" in argv:
        position = argv.index("--config") + 1
        with open(argv[position]) as handle:
            config = yaml.safe_load(handle) or {}
        overrides = {key[len("stage2_"):]: config.pop(key) for key in list(config) if key.startswith("stage2_")}
        if overrides:
            import tempfile

            stripped = tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False)
            yaml.safe_dump(config, stripped)
            stripped.close()
            argv[position] = stripped.name
    rest, i = [], 0
    while i < len(argv):
        if argv[i].startswith("--stage2_"):
            overrides[argv[i][len("--stage2_"):]] = yaml.safe_load(argv[i + 1])
            i += 2
            continue
        rest.append(argv[i])
        i += 1
    return rest, overrides


def run(args) -> int:
    from ..recipe import run_two_stage
    from .train import parse_recipe

    if args.help:
        parse_recipe(["--help"])
        return 0
    argv, overrides = split_stage2_overrides(args.recipe_args)
    parser, (model_args, data_args, training_args) = parse_recipe(argv)
    known = set(type(training_args).__dataclass_fields__)
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"unknown stage2_ override(s) {unknown}: not FinedeficsTrainingConfig fields")
    stage1_dir, stage2_dir = run_two_stage(model_args, data_args, training_args, overrides)
    print(f"stage I checkpoint:  {stage1_dir}\nstage II checkpoint: {stage2_dir}")
    return 0
