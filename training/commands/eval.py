"""``finedefics eval --model PATH --benchmark NAME --mode ... --output-dir DIR``: FOCI-style evaluation.

Writes, per benchmark, ``report.json``, ``report.md``, FOCI-format prediction files and plots (see
``finedefics_eval.report``). With several benchmarks each gets a sub-folder and ``DIR/report.json``
sums them up under ``"benchmarks"`` (the shape ``finedefics push --report`` turns into the card).
``--import-foci`` reports FOCI's own prediction files the same way, without a model.
"""

from __future__ import annotations

from pathlib import Path

# finedefics_eval.scoring.MODES, repeated here because importing it loads torch (``--help`` stays fast).
MODES = ("generate", "likelihood", "embedding", "open_set")


def register(subparsers) -> None:
    from .data import add_noun_arguments

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
    parser.add_argument("--mode", nargs="+", default=["generate"], choices=MODES,
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
                        help="also render the results into the checkpoint's README.md (merged with results already there)")
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
    from finedefics_eval.report import write_report

    from ..checkpoints import check_output_dir

    if not args.import_foci and not (args.model and args.benchmark):
        raise ValueError("give --model and --benchmark, or --import-foci FILE to report FOCI prediction files")
    check_output_dir(args.output_dir)
    output = Path(args.output_dir)
    reports = _imported_reports(args) if args.import_foci else _model_reports(args)
    several = len(reports) > 1
    for name, report in reports.items():
        folder = write_report(report, output / _folder_name(name) if several else output, plots=not args.no_plots)
        _print_summary(name, report, folder)
    if several:
        _write_summary(reports, output, None if args.import_foci else args.seed)
    if args.write_card:
        _write_card(args.model, reports)
    return 0


def _imported_reports(args) -> dict:
    from finedefics_eval.report import report_from_prediction_file

    reports = {}
    for path in args.import_foci:
        report = report_from_prediction_file(path, bootstrap_samples=args.bootstrap_samples)
        reports[_unique(reports, report["benchmark"])] = report
    return reports


def _model_reports(args) -> dict:
    from finedefics_eval.benchmarks import load_benchmark
    from finedefics_eval.runner import evaluate_model

    several = len(args.benchmark) > 1
    extra = {"max_per_label": args.max_per_label} if args.max_per_label else {}
    loaded = _LazyModel(args.model, args.device, args.dtype)
    noun = _question_noun(args)
    # Benchmarks first: bad input fails before minutes of model loading (unless mining needs the model).
    benchmarks = [load_benchmark(spec, image_root=_image_root(args.image_root, spec, several), split=args.split,
                                 limit=args.limit, negatives=_negatives(args.negatives, loaded), noun=noun,
                                 train_data=args.train_data,
                                 allow_images_outside_root=args.allow_images_outside_root, **extra)
                  for spec in args.benchmark]
    model, processor = loaded.get()
    reports = {}
    for benchmark in benchmarks:
        report = evaluate_model(model, processor, benchmark, modes=args.mode, seed=args.seed,
                                batch_size=args.batch_size, max_new_tokens=args.max_new_tokens,
                                likelihood_answer=args.likelihood_answer, prompt_template=args.prompt_template,
                                bootstrap_samples=args.bootstrap_samples, progress=not args.no_progress,
                                model_name=args.model)
        reports[_unique(reports, benchmark.name)] = report
    return reports


def _question_noun(args):
    """``--noun``, else the noun the checkpoint was trained with (its config), else None (the data's own)."""
    from .data import noun_from_arguments

    if args.noun or args.noun_plural:
        return noun_from_arguments(args)
    noun = checkpoint_noun(args.model)
    if noun is not None:
        print(f"objects are called {str(noun)!r} in the questions (the checkpoint's config.object_noun)")
    return noun


def checkpoint_noun(name_or_path: str):
    """The ``ObjectNoun`` stored in a checkpoint's config.json (local or on the Hub), or None."""
    from transformers import PretrainedConfig

    from finedefics_data.prompts import ObjectNoun

    from ..checkpoints import check_model_source

    check_model_source(name_or_path)
    config, _ = PretrainedConfig.get_config_dict(name_or_path)
    return ObjectNoun.from_config(config)


class _LazyModel:
    """Loads the model on first use, so that benchmarks can be checked before and mined with it."""

    def __init__(self, name_or_path: str, device: str, dtype: str):
        self.arguments, self.loaded = (name_or_path, device, dtype), None

    def get(self):
        if self.loaded is None:
            self.loaded = load_model(*self.arguments)
        return self.loaded


def _negatives(choice: str, loaded: _LazyModel):
    """The ``negatives`` argument of ``load_benchmark`` for ``--negatives``."""
    if choice == "names":
        return None
    if choice != "auto":
        return _read_negatives_file(Path(choice))

    def model_text_embeddings(names: list[str]):
        from finedefics_data.negatives import finedefics_text_embedder, mine_by_embeddings

        model, processor = loaded.get()
        return mine_by_embeddings(names, finedefics_text_embedder(model, processor), k=3)

    return model_text_embeddings


def _read_negatives_file(path: Path) -> dict:
    import json

    if not path.is_file():
        raise FileNotFoundError(f"negatives file not found: {path} (or use --negatives auto|names)")
    try:
        negatives = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from error
    if not isinstance(negatives, dict) or not all(isinstance(v, list) for v in negatives.values()):
        raise ValueError(f"{path}: expected a JSON object mapping each category to a list of similar categories")
    return negatives


def load_model(name_or_path: str, device: str = "auto", dtype: str = "auto"):
    """A Finedefics model (eval mode, on ``device``) and its processor."""
    import torch

    from modeling_finedefics import FinedeficsForConditionalGeneration, FinedeficsProcessor

    from ..checkpoints import check_model_source, check_vocabulary

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if dtype == "auto":
        dtype = "bfloat16" if device.startswith("cuda") else "float32"
    check_model_source(name_or_path)
    model = FinedeficsForConditionalGeneration.from_pretrained(name_or_path, dtype=getattr(torch, dtype))
    processor = FinedeficsProcessor.from_pretrained(name_or_path)
    check_vocabulary(model, processor.tokenizer, name_or_path)
    return model.to(device).eval(), processor


def _image_root(image_root: str | None, spec: str, several: bool) -> str | None:
    """With several benchmarks, ``image_root/<benchmark>`` when that folder exists, else ``image_root``."""
    if image_root and several and (Path(image_root) / spec.removeprefix("foci:")).is_dir():
        return str(Path(image_root) / spec.removeprefix("foci:"))
    return image_root


def _unique(existing: dict, name: str) -> str:
    candidate, number = name, 2
    while candidate in existing:
        candidate, number = f"{name}-{number}", number + 1
    return candidate


def _folder_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def _print_summary(name: str, report: dict, folder: Path) -> None:
    skipped = report["skipped"]
    for mode, metrics in report["modes"].items():
        interval = metrics.get("ci95") or [float("nan")] * 2
        speed = metrics.get("images_per_second")
        print(f"{name} {mode}: accuracy {100 * metrics['accuracy']:.2f} "
              f"(95% CI {100 * interval[0]:.2f}-{100 * interval[1]:.2f}), failures {metrics['failures']}, "
              f"n {metrics['n']}" + (f", {speed:.1f} images/s" if speed else ""))
    if skipped["missing_images"] or skipped["unreadable_images"]:
        print(f"{name}: skipped {skipped['missing_images']} missing and {skipped['unreadable_images']} "
              "unreadable images (listed in report.json)")
    print(f"{name}: report written to {folder}")


def _write_summary(reports: dict, output: Path, seed: int | None) -> None:
    import json

    from finedefics_eval.report import render_summary_markdown, summarize_reports

    summary = summarize_reports(reports, seed)
    for name in summary["benchmarks"]:
        summary["benchmarks"][name]["report"] = f"{_folder_name(name)}/report.json"
    (output / "report.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    (output / "report.md").write_text(render_summary_markdown(summary), encoding="utf-8")
    means = ", ".join(f"{mode} {100 * m['accuracy']:.2f}" for mode, m in summary["mean_accuracy"].items())
    print(f"mean accuracy over {len(reports)} benchmarks: {means}; summary in {output / 'report.json'}")


def _write_card(model: str | None, reports: dict) -> None:
    from finedefics_eval.model_card import write_model_card

    if not model or not Path(model).is_dir():
        raise ValueError("--write-card needs --model to be a local checkpoint folder (its README.md is the card)")
    readme = write_model_card(model, [{k: v for k, v in r.items() if k != "predictions"} for r in reports.values()])
    print(f"model card written to {readme}")
