"""``finedefics eval --model PATH --benchmark NAME --mode ... --output-dir DIR``: FOCI-style evaluation.

Writes, per benchmark, ``report.json``, ``report.md``, FOCI-format prediction files and plots (see
``finedefics_eval.report``). With several benchmarks each gets a sub-folder and ``DIR/report.json``
sums them up under ``"benchmarks"`` (the shape ``finedefics push --report`` turns into the card).
``--import-foci`` reports FOCI's own prediction files the same way, without a model.

Under ``accelerate launch`` / ``torchrun`` the evaluation is data-parallel: each process scores its share of the
batches (on its own GPU with ``--device auto``, else on the CPU over gloo), the predictions are merged in the
original order, and rank 0 alone writes the report, identical to one process's but for the timings
(``finedefics_eval.runner``).
"""

from __future__ import annotations

from pathlib import Path

from finedefics_eval.scorers import scoring_modes


def register(subparsers) -> None:
    from .noun_arguments import add_noun_arguments

    parser = subparsers.add_parser(
        "eval",
        help="evaluate a checkpoint on FOCI's datasets or any classification benchmark (reports, plots, card)",
        description=(
            "4-way multiple-choice recognition with FOCI's prompt and answer rule (seeded option order), scored "
            "by generation, option likelihood and/or embedding similarity, plus open-set naming. A FOCI dataset "
            "(aircraft-102, bird-200, car-196, dog-120, flower-102, pet-37) needs --image-root, the folder its "
            "image paths are relative to. Other benchmarks: a synthetic benchmark folder, an imagefolder, a "
            "save_to_disk dataset or a FOCI option file."
        ),
    )
    parser.add_argument("--model", help="checkpoint folder or Hub id of a Finedefics model")
    parser.add_argument("--benchmark", nargs="+", default=[], metavar="NAME_OR_PATH",
                        help="FOCI dataset name(s) or benchmark path(s)")
    parser.add_argument("--mode", nargs="+", default=["generate"], choices=scoring_modes(),
                        help="scoring mode(s) (default: generate, FOCI's protocol)")
    parser.add_argument("--output-dir", required=True, help="folder for report.json, report.md, predictions, plots")
    parser.add_argument("--image-root", default=None,
                        help="image folder of a FOCI dataset (with several datasets: DIR/<dataset> where it exists)")
    parser.add_argument("--allow-images-outside-root", action="store_true",
                        help="read option-file image paths that leave the image root (absolute, or climbing out "
                             "with '..'); refused by default")
    parser.add_argument("--split", default="test", help="dataset split (default: test)")
    add_noun_arguments(parser, "default: the checkpoint's config.object_noun, else the benchmark data's, else "
                               "'object'; FOCI's datasets always keep FOCI's question")
    parser.add_argument("--train-data", metavar="DIR",
                        help="the training data (a `finedefics data` folder): which categories are rare, by their "
                             "is_rare column or training counts, for the rare-vs-common slice")
    parser.add_argument("--seed", type=int, default=0, help="seed of the option order (default: 0)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--limit", type=int, default=None, help="score the first N examples only (a smoke test)")
    parser.add_argument("--max-per-label", type=int, default=None,
                        help="FOCI datasets: first N examples per label (FOCI's --max_examples)")
    parser.add_argument("--max-new-tokens", type=int, default=10, help="generate mode's budget (FOCI: 10)")
    parser.add_argument("--likelihood-answer", default="letter", choices=["letter", "letter_name", "name"],
                        help="answer scored by the likelihood mode (default: the letter token)")
    parser.add_argument("--prompt-template", default="{}",
                        help="wraps the FOCI prompt; FOCI's runner used 'User: {}' for Idefics2 (default: '{}')")
    parser.add_argument("--bootstrap-samples", type=int, default=1000, help="resamples of the 95%% intervals")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                        help="model dtype (default: bfloat16 on GPU, float32 on CPU)")
    parser.add_argument("--write-card", action="store_true",
                        help="also render the results into the checkpoint's README.md "
                             "(merged with results already there)")
    parser.add_argument("--negatives", default="auto", metavar="auto|names|FILE",
                        help="wrong options for datasets without option files or per-row negatives: 'auto' mines "
                             "attributes where rows have them, else the model's text embeddings of the names; "
                             "'names' compares names as strings; FILE is a JSON {category: [negatives]}")
    parser.add_argument("--import-foci", nargs="+", default=[], metavar="FILE",
                        help="FOCI prediction file(s) to report instead of running a model")
    parser.add_argument("--no-plots", action="store_true", help="skip the plots")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def run(args) -> int:
    from finedefics_eval.report import summarize_reports, summary_lines, write_reports
    from finedefics_training.checkpoints import check_output_dir

    if not args.import_foci and not (args.model and args.benchmark):
        raise ValueError("give --model and --benchmark, or --import-foci FILE to report FOCI prediction files")
    check_output_dir(args.output_dir)
    processes = _data_parallel(args)
    reports = _imported_reports(args) if args.import_foci else _model_reports(args, processes)
    if not processes.is_main:
        return 0  # rank 0 holds the same merged reports and writes them
    folders = write_reports(reports, args.output_dir, seed=None if args.import_foci else args.seed,
                            plots=not args.no_plots)
    for name, report in reports.items():
        print("\n".join(summary_lines(name, report)))
        print(f"{name}: report written to {folders[name]}")
    if len(reports) > 1:
        summary = summarize_reports(reports)
        means = ", ".join(f"{mode} {100 * m['accuracy']:.2f}" for mode, m in summary["mean_accuracy"].items())
        print(f"mean accuracy over {len(reports)} benchmarks: {means}; summary in "
              f"{Path(args.output_dir) / 'report.json'}")
    if args.write_card:
        _write_card(args.model, reports)
    return 0


def _data_parallel(args):
    """The processes of this launch (this one alone outside a launch); ``--device auto`` or ``cuda``: each rank
    its own device."""
    import torch

    from finedefics_data.sharding import DataParallel

    cpu = args.device == "cpu" or (args.device == "auto" and not torch.cuda.is_available())
    processes = DataParallel(cpu=cpu)
    if processes.world_size > 1:
        if args.device in ("auto", "cuda"):  # one device per rank, not every rank on the first GPU
            args.device = str(processes.device)
        if processes.is_main and not args.import_foci:
            print(f"data-parallel evaluation over {processes.world_size} processes: each scores its share of the "
                  "batches; the predictions are merged in order and rank 0 writes the report")
    return processes


def _imported_reports(args) -> dict:
    from finedefics_eval.report import report_from_prediction_file, unique_name

    reports = {}
    for path in args.import_foci:
        report = report_from_prediction_file(path, bootstrap_samples=args.bootstrap_samples)
        reports[unique_name(reports, report["benchmark"])] = report
    return reports


def _model_reports(args, processes) -> dict:
    from finedefics_eval.benchmarks import load_benchmark
    from finedefics_eval.loading import LazyModel, negatives_option
    from finedefics_eval.report import unique_name
    from finedefics_eval.runner import evaluate_model

    several = len(args.benchmark) > 1
    extra = {"max_per_label": args.max_per_label} if args.max_per_label else {}
    model = LazyModel(args.model, args.device, args.dtype)
    noun = _question_noun(args, processes.is_main)
    # Benchmarks first: bad input fails before minutes of model loading (unless mining needs the model).
    benchmarks = [load_benchmark(spec, image_root=_image_root(args.image_root, spec, several), split=args.split,
                                 limit=args.limit, negatives=negatives_option(args.negatives, model), noun=noun,
                                 train_data=args.train_data,
                                 allow_images_outside_root=args.allow_images_outside_root, **extra)
                  for spec in args.benchmark]
    reports = {}
    for benchmark in benchmarks:
        report = evaluate_model(*model.get(), benchmark, modes=args.mode, seed=args.seed,
                                batch_size=args.batch_size, max_new_tokens=args.max_new_tokens,
                                likelihood_answer=args.likelihood_answer, prompt_template=args.prompt_template,
                                bootstrap_samples=args.bootstrap_samples, progress=not args.no_progress,
                                model_name=args.model)
        reports[unique_name(reports, benchmark.name)] = report
    return reports


def _question_noun(args, verbose: bool = True):
    """``--noun``, else the noun the checkpoint was trained with (its config), else None (the data's own)."""
    from finedefics_eval.loading import checkpoint_noun

    from .noun_arguments import noun_from_arguments

    if args.noun or args.noun_plural:
        return noun_from_arguments(args)
    noun = checkpoint_noun(args.model)
    if noun is not None and verbose:
        print(f"objects are called {str(noun)!r} in the questions (the checkpoint's config.object_noun)")
    return noun


def _image_root(image_root: str | None, spec: str, several: bool) -> str | None:
    """With several benchmarks, ``image_root/<benchmark>`` when that folder exists, else ``image_root``."""
    if image_root and several and (Path(image_root) / spec.removeprefix("foci:")).is_dir():
        return str(Path(image_root) / spec.removeprefix("foci:"))
    return image_root


def _write_card(model: str | None, reports: dict) -> None:
    from finedefics_eval.model_card import write_model_card

    if not model or not Path(model).is_dir():
        raise ValueError("--write-card needs --model to be a local checkpoint folder (its README.md is the card)")
    readme = write_model_card(model, [{k: v for k, v in r.items() if k != "predictions"} for r in reports.values()])
    print(f"model card written to {readme}")
