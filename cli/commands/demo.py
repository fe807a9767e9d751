"""``finedefics demo``: the paper's experiment in miniature on the embedded synthetic benchmark (or your data)."""

from __future__ import annotations


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="run the whole method end to end on the embedded synthetic benchmark (CPU, minutes)",
        description=(
            "Generate the synthetic fine-grained benchmark (or use --data DIR), take the base model that stands "
            "in for Idefics2 (shipped with the package for the default benchmark; built otherwise), measure its "
            "premise (it describes what it sees and knows every category in words, yet cannot name them), train "
            "Finedefics (stage I + II) and the instruction-tuning baseline (stage II only, at equal total steps and "
            "at equal stage II steps) on the same data for each seed (--ablations adds the paper's ablations), "
            "evaluate all in three scoring modes and open-set naming, and write OUTPUT_DIR/model (checkpoint + "
            "model card) and OUTPUT_DIR/report. Rerunning resumes where it stopped."
        ),
    )
    parser.add_argument("--output-dir", default="finedefics-demo",
                        help="where everything goes (default: ./finedefics-demo)")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke test of every phase in about a minute (micro model; the premise is not "
                             "expected to hold)")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, metavar="SEED",
                        help="training seeds of the variants; the mean, the spread and the gap's interval are "
                             "reported (default: 0; the README's table uses --seeds 0 1 2)")
    parser.add_argument("--seed", type=int, default=None, help="a single training seed (same as --seeds SEED)")
    parser.add_argument("--data", metavar="DIR",
                        help="run on a dataset folder from `finedefics data` (synth, csv, cub) instead of the "
                             "embedded benchmark; the base model is built for it")
    parser.add_argument("--rebuild-base", action="store_true",
                        help="build the base model instead of starting from the shipped one, and check that the "
                             "result is bit for bit the shipped one")
    parser.add_argument("--backbone", default=None, metavar="FAMILY",
                        help="model family of the miniature: idefics2 (default; its base ships with the package), "
                             "idefics3, smolvlm, qwen2_vl, qwen2_5_vl or llava (the base is built: no vision "
                             "pre-training, so the premise is not expected to hold)")
    parser.add_argument("--eval-split", default="test", choices=["test", "validation"],
                        help="split of the table: test (default) for results, validation while choosing settings")
    variants = parser.add_mutually_exclusive_group()
    variants.add_argument("--variants", nargs="+", default=None, metavar="NAME",
                          help="the variants to train and compare (finedefics always runs): finedefics, "
                               "instruction_tuning (stage II only, equal total steps), instruction_tuning_stage2 "
                               "(stage II only, equal stage II steps), no_hard_negatives, no_attribute_descriptions, "
                               "single_stage (default: the first three)")
    variants.add_argument("--ablations", action="store_true",
                          help="all six variants: the paper's ablation table in miniature")
    parser.add_argument("--descriptions", default="benchmark", choices=["benchmark", "generated"],
                        help="generated: also train Finedefics on descriptions the base model writes for the training "
                             "images (finedefics data describe, one question per attribute), beside the run on the "
                             "benchmark's own (report row finedefics_generated)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="change a field of the demo plan for an experiment, e.g. --set stage1_steps=600")
    parser.set_defaults(func=run)


def run(args) -> int:
    from finedefics_training.demo import run_demo

    overrides = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--set takes KEY=VALUE, got {item!r}")
        overrides[key.strip()] = value.strip()
    if args.backbone is not None:
        overrides["backbone"] = args.backbone
    if args.seed is not None and args.seeds is not None:
        raise ValueError("give --seed or --seeds, not both")
    seeds = tuple(args.seeds or ([args.seed] if args.seed is not None else [0]))
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds has repeated values: {list(seeds)}")
    from finedefics_training.demo.variants import ABLATION_VARIANTS

    variants = ABLATION_VARIANTS if args.ablations else args.variants
    table = run_demo(args.output_dir, quick=args.quick, seeds=seeds, overrides=overrides, data_dir=args.data,
                     rebuild_base=args.rebuild_base, eval_split=args.eval_split, variants=variants,
                     descriptions=args.descriptions)
    print(f"\nFinedefics demo: accuracy (%) on the held-out {args.eval_split} split"
          + (f", mean ± std over seeds {', '.join(map(str, seeds))}" if len(seeds) > 1 else "") + "\n")
    print(table)
    print(f"\nreport: {args.output_dir}/report/report.md   model: {args.output_dir}/model")
    return 0
