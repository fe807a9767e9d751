"""``finedefics demo``: the paper's experiment in miniature on the embedded synthetic benchmark."""

from __future__ import annotations


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="run the whole method end to end on the embedded synthetic benchmark (CPU, minutes)",
        description=(
            "Generate the synthetic fine-grained benchmark, give a tiny model its base knowledge, train "
            "Finedefics (stage I + II) and the ablations (stage II only; no hard negatives) with the same "
            "steps and data, evaluate all in three scoring modes, and write OUTPUT_DIR/model (checkpoint + "
            "model card) and OUTPUT_DIR/report. Rerunning resumes where it stopped."
        ),
    )
    parser.add_argument("--output-dir", default="finedefics-demo", help="where everything goes (default: ./finedefics-demo)")
    parser.add_argument("--quick", action="store_true", help="a smaller run of about two minutes (CI, smoke test)")
    parser.add_argument("--seed", type=int, default=0, help="seed of data, model and training (default 0)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="change a field of the demo plan for an experiment, e.g. --set stage1_steps=600")
    parser.set_defaults(func=run)


def run(args) -> int:
    from ..demo import run_demo

    overrides = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--set takes KEY=VALUE, got {item!r}")
        overrides[key.strip()] = value.strip()
    table = run_demo(args.output_dir, quick=args.quick, seed=args.seed, overrides=overrides)
    print("\nFinedefics demo: accuracy (%) on the held-out synthetic test split\n")
    print(table)
    print(f"\nreport: {args.output_dir}/report/report.md   model: {args.output_dir}/model")
    return 0
