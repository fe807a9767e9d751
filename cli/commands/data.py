"""``finedefics data synth|preview|csv|cub|options``: build and check Finedefics training data.

- ``synth DIR``: generate the embedded synthetic fine-grained benchmark (``--preview PATH.png``
  also writes a contact sheet of a few genera).
- ``preview DIR PATH.png``: the contact sheet of an existing synthetic benchmark.
- ``csv FILE.csv --image-root DIR``: read and check a reference-implementation training CSV (stage I's
  pretrain.csv or stage II's finetune.csv); with ``--output`` save it as a dataset that ``finedefics
  train --dataset_dir`` reads, with ``--noun`` recorded as what its objects are called.
- ``imagefolder ROOT --output DIR``: an image folder's train/ and test/ splits (or one split), kept as
  splits of a dataset folder (e.g. the test images beside the training rows of ``data csv``).
- ``cub CUB_ROOT --output DIR``: CUB-200-2011 with descriptions from its attribute annotations and
  hard negatives mined from the same annotations.
- ``options DATA --output FILE.json``: FOCI-style 4-way option sets for a dataset split, from a
  hard-negative miner.
- ``describe INPUT --output DIR``: attribute descriptions for a labelled image folder, by models
  (``data_describe.py``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .noun_arguments import add_noun_arguments, noun_from_arguments


def register(subparsers) -> None:
    parser = subparsers.add_parser("data",
                                   help="build and check training data (synthetic, CSV, CUB, options, describe)",
                                   description=__doc__.split("\n\n", 1)[1].replace("``", ""),
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="data_command", metavar="DATA_COMMAND", required=True)
    _register_synth(commands)
    _register_preview(commands)
    _register_csv(commands)
    _register_imagefolder(commands)
    _register_cub(commands)
    _register_options(commands)
    _register_describe(commands)


# ----------------------------------------------------------------------------- synth / preview
def _register_synth(commands) -> None:
    from finedefics_data.synth import SynthConfig  # numpy + PIL only: cheap enough for --help

    defaults = SynthConfig()
    parser = commands.add_parser("synth", help="generate the synthetic fine-grained bird benchmark",
                                 description="Generate the synthetic benchmark: train/ and test/ (imagefolder with "
                                             "metadata.jsonl), categories.json, foci_test.json, train_reference.csv, "
                                             "README.md.")
    parser.add_argument("output", help="folder to create (must be new or empty, or use --overwrite)")
    for name, help_text in [("num_genera", "groups of similar species"), ("species_per_genus", "species per genus"),
                            ("train_per_category", "training images of a common species"),
                            ("rare_train_per_category", "training images of a rare species"),
                            ("validation_per_category", "validation images per species"),
                            ("test_per_category", "test images per species"), ("image_size", "pixels per side"),
                            ("seed", "random seed (same seed, same bytes)"),
                            ("num_negatives", "hard negatives per image")]:
        parser.add_argument("--" + name.replace("_", "-"), dest=name, type=int, default=getattr(defaults, name),
                            help=f"{help_text} (default {getattr(defaults, name)})")
    parser.add_argument("--rare-fraction", type=float, default=defaults.rare_fraction,
                        help=f"share of rare species (default {defaults.rare_fraction})")
    parser.add_argument("--occlusion-prob", type=float, default=defaults.occlusion_prob,
                        help=f"chance that a part is hidden (default {defaults.occlusion_prob})")
    parser.add_argument("--preview", metavar="PATH.png", help="also write a contact sheet of a few genera")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing synthetic benchmark in OUTPUT")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run_synth)


def run_synth(args) -> int:
    from finedefics_data.synth import SynthConfig, generate_benchmark, load_categories

    config = SynthConfig(num_genera=args.num_genera, species_per_genus=args.species_per_genus,
                         train_per_category=args.train_per_category, rare_fraction=args.rare_fraction,
                         rare_train_per_category=args.rare_train_per_category,
                         validation_per_category=args.validation_per_category,
                         test_per_category=args.test_per_category,
                         image_size=args.image_size, seed=args.seed, num_negatives=args.num_negatives,
                         occlusion_prob=args.occlusion_prob)
    output = generate_benchmark(args.output, config, progress=not args.no_progress, overwrite=args.overwrite)
    categories = load_categories(output)
    rare = sum(c["is_rare"] for c in categories)
    print(f"{output}: {len(categories)} species ({rare} rare), {sum(c['n_train'] for c in categories)} train / "
          f"{sum(c['n_validation'] for c in categories)} validation / "
          f"{sum(c['n_test'] for c in categories)} test images")
    if args.preview:
        _write_preview(output, args.preview)
    return 0


def _register_preview(commands) -> None:
    parser = commands.add_parser("preview", help="write a contact sheet of a synthetic benchmark")
    parser.add_argument("data_dir", help="a folder made by `finedefics data synth`")
    parser.add_argument("path", metavar="PATH.png", help="where to write the picture")
    parser.add_argument("--genera", type=int, default=2, help="genera to show (default 2)")
    parser.set_defaults(func=lambda args: _write_preview(args.data_dir, args.path, args.genera))


def _write_preview(data_dir, path, genera: int = 2) -> int:
    from finedefics_data.preview import write_preview

    print(f"preview: {write_preview(data_dir, path, num_genera=genera)}")
    return 0


# ----------------------------------------------------------------------------- csv
def _register_csv(commands) -> None:
    parser = commands.add_parser(
        "csv", help="read and check a reference-implementation training CSV (pretrain.csv or finetune.csv)",
        description="Read a training CSV in the reference implementation's format. Stage II rows (finetune.csv) "
                    "have no category: a recognition question gets the category its answer picks (a multiple "
                    "choice - options 'A. x', 'A) x' or '(A) x', on lines or inline, with or without a Choices: "
                    "line - answered with a letter, 'letter. name' or the name; or an answer that is a known "
                    "category name; or a type that says recognition/classification/open-set/closed-set/"
                    "multiple-choice); other question/answer rows are kept as instruction rows without a "
                    "category. A derived category that is not known is refused unless --allow-new-categories. "
                    "The summary counts the kept rows by kind and the multiple-choice rows read and not read.")
    parser.add_argument("csv", help="the CSV file (columns question, answer, type, image_path, attribute, ...)")
    parser.add_argument("--image-root", help="folder the CSV's image paths are relative to (required)")
    parser.add_argument("--output", help="save the records as a dataset in this folder (as --split; the folder's "
                                         "other splits are kept, so one file per split builds one dataset)")
    parser.add_argument("--split", default="train",
                        help="the split these rows are: train (default), validation or test; `finedefics demo "
                             "--data` evaluates on the dataset's own test split")
    add_noun_arguments(parser, "recorded with --output; used by init-model, training, eval and the model card")
    parser.add_argument("--categories", metavar="FILE", action="append", default=[],
                        help="known category names an answer may name: a reference CSV (its category column, "
                             "e.g. pretrain.csv) or a text file with one name per line (repeatable)")
    parser.add_argument("--allow-new-categories", action="store_true",
                        help="create the categories that recognition answers name but neither the file's category "
                             "column nor --categories holds (refused by default: usually --categories is missing "
                             "or a name is misspelt)")
    parser.add_argument("--skip-bad-rows", action="store_true",
                        help="skip and count bad rows instead of stopping at the first")
    parser.add_argument("--keep-multi-image", action="store_true",
                        help="keep two-image rows (skipped and counted by default)")
    parser.add_argument("--no-check-images", action="store_true", help="do not open every image while reading")
    parser.add_argument("--allow-images-outside-root", action="store_true",
                        help="read image paths that leave --image-root (absolute, or climbing out with '..'); "
                             "refused by default")
    add_merge_argument(parser)
    parser.set_defaults(func=run_csv)


def add_merge_argument(parser) -> None:
    parser.add_argument("--merge-duplicate-names", action="store_true",
                        help="merge category names that differ only in case, spacing or punctuation into one spelling "
                             "(the dataset folder's, else the most frequent; each merge is reported) instead of "
                             "refusing them")


def run_csv(args) -> int:
    from finedefics_data.folders import categories_of
    from finedefics_data.prompts import open_set_question
    from finedefics_data.readers import read_category_names, read_reference_csv

    noun = noun_from_arguments(args)
    csv_path, image_root = _reference_paths(args.csv, args.image_root)
    trained = categories_of(args.output) if args.output and args.split != "train" else []
    records = read_reference_csv(csv_path, image_root, errors="skip" if args.skip_bad_rows else "raise",
                                 multi_image="keep" if args.keep_multi_image else "skip",
                                 check_images=not args.no_check_images, require_category=False,
                                 known_categories=[*read_category_names(args.categories), *trained],
                                 allow_images_outside_root=args.allow_images_outside_root,
                                 allow_new_categories=args.allow_new_categories)
    print(records.report.summary())
    if not records:
        raise ValueError(f"{args.csv}: none of its {records.report.rows_read} rows was kept (see the summary "
                         "above); nothing to save")
    hint = _recognition_hint(records, args.categories)
    if hint:
        print(hint)
    print(f"object noun: {noun} (open-set question: {open_set_question(noun)!r})" if noun else
          "object noun: not set (give --noun, or object_noun in the recipe)")
    if args.output:
        _save_one_split(records, args.output, args.split, noun, trained, args.merge_duplicate_names)
    return 0


def _reference_paths(csv_path: str, image_root: str | None) -> tuple[Path, Path]:
    """The CSV and its image root; a folder (a dataset's root) is answered with the commands it needs."""
    from finedefics_data.folders import how_to_prepare, what_folder_is

    path = Path(csv_path)
    if path.is_dir():
        commands = how_to_prepare(path)
        raise ValueError(f"{path} is a folder ({what_folder_is(path)}), not a CSV file; "
                         + (f"read its files with\n{commands}" if commands else
                            "give the CSV file (e.g. pretrain.csv) and --image-root"))
    if image_root is None:
        raise ValueError(f"{path}: --image-root is needed, the folder the CSV's image_path cells are relative to"
                         + (f" (e.g. --image-root {path.parent / 'images'})" if (path.parent / "images").is_dir()
                            else ""))
    return path, Path(image_root)


def _save_one_split(records, output: str, split: str, noun, trained: list[str], merge_duplicate_names: bool = False
                    ) -> None:
    """Save ``records`` as ``split`` of ``output`` (keeping its other splits) and say what the folder holds."""
    from finedefics_data.folders import SPLITS, save_split

    if split not in SPLITS:
        raise ValueError(f"--split must be one of {', '.join(SPLITS)}, got {split!r}")
    untrained = sorted({r["category"] for r in records if r.get("category")} - set(trained)) if trained else []
    if untrained:
        print(f"warning: {len(untrained)} categories of the {split} split have no training rows in {output}: "
              + ", ".join(repr(name) for name in untrained[:5]) + (" ..." if len(untrained) > 5 else ""))
    counts = save_split(records, output, split, noun, merge_duplicate_names)
    merged = {what: n for what, n in (records.report.notes if records.report else {}).items()
              if what.startswith("category name merged")}
    for what, count in merged.items():
        print(f"  {what}: {count}")
    print(f"saved {split}: {len(records)} rows to {output} (splits now: "
          + ", ".join(f"{name} {count}" for name, count in counts.items()) + ")")


def _recognition_hint(records, categories: list[str]) -> str | None:
    """What to give when no known category list let the answers be read as recognition (None: nothing)."""
    from finedefics_data.kinds import INSTRUCTION, NO_KNOWN_OPTION
    from finedefics_data.readers import MC_NOT_READ

    if categories:
        return None
    unread = records.report.notes.get(MC_NOT_READ.format(NO_KNOWN_OPTION), 0)
    if unread:
        return (f"{unread} multiple-choice rows have no known category among their options: give the category names "
                "with --categories (e.g. --categories pretrain.csv), or --allow-new-categories to read the options "
                "they pick as new categories")
    if records.report.kinds.get(INSTRUCTION) == len(records):
        return ("no row was read as a recognition question: if answers name categories, give their names with "
                "--categories (e.g. --categories pretrain.csv), or mark the rows' type as recognition")
    return None


# ----------------------------------------------------------------------------- imagefolder
def _register_imagefolder(commands) -> None:
    parser = commands.add_parser(
        "imagefolder", help="read an image folder (train/ and test/, or one split) into a dataset folder",
        description="Read an imagefolder into a dataset folder, each split kept: ROOT/train, ROOT/validation and "
                    "ROOT/test (metadata.jsonl with file_name and category or label, optionally attribute and "
                    "neg_categories; or <class>/<image> folders), or ROOT itself as --split. The dataset folder's "
                    "other splits are kept, so a test imagefolder can join the training rows of `data csv`.")
    parser.add_argument("root", help="the image folder (with train/ and test/ folders, or one split's images)")
    parser.add_argument("--output", required=True, help="the dataset folder to write or add the splits to")
    parser.add_argument("--split", choices=["train", "validation", "test"],
                        help="the split ROOT's images are, when ROOT has no train/ or test/ folders")
    add_noun_arguments(parser, "recorded with --output")
    parser.add_argument("--no-check-images", action="store_true", help="do not open every image while reading")
    add_merge_argument(parser)
    parser.set_defaults(func=run_imagefolder)


def run_imagefolder(args) -> int:
    from finedefics_data.folders import categories_of, imagefolder_splits, read_imagefolder_split

    root, noun = Path(args.root), noun_from_arguments(args)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder not found: {root}")
    found = imagefolder_splits(root)
    if found and args.split:
        raise ValueError(f"{root} has split folders ({', '.join(found)}): they keep their splits; drop --split")
    if not found:
        if not args.split:
            raise ValueError(f"{root} has no train/, validation/ or test/ folder: say which split its images are "
                             "with --split (e.g. --split test)")
        found = {args.split: root}
    for split, folder in found.items():
        records = read_imagefolder_split(folder, check_images=not args.no_check_images)
        print(records.report.summary())
        trained = categories_of(args.output) if split != "train" else []
        _save_one_split(records, args.output, split, noun, trained, args.merge_duplicate_names)
    return 0


# ----------------------------------------------------------------------------- cub
def _register_cub(commands) -> None:
    parser = commands.add_parser("cub", help="CUB-200-2011 with descriptions from its attribute annotations")
    parser.add_argument("cub_root", help="the CUB_200_2011 folder (images/, attributes/, images.txt, ...)")
    parser.add_argument("--output", required=True, help="folder for the train/test dataset, or a .jsonl file for "
                                                        "per-image descriptions only")
    parser.add_argument("--certainty", type=int, default=3, choices=[1, 2, 3, 4],
                        help="lowest certainty id counted: 2 guessing, 3 probably, 4 definitely (default 3)")
    parser.add_argument("--num-negatives", type=int, default=3, help="hard negatives per image (default 3)")
    parser.add_argument("--skip-bad-rows", action="store_true", help="skip and count bad lines and images")
    parser.set_defaults(func=run_cub)


def run_cub(args) -> int:
    from finedefics_data.readers import build_cub_records, read_cub_attributes

    errors = "skip" if args.skip_bad_rows else "raise"
    if args.output.endswith(".jsonl"):
        records = read_cub_attributes(args.cub_root, args.certainty, errors=errors)
        with open(args.output, "w", encoding="utf-8") as handle:
            for record in records:
                handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        print(records.report.summary())
        print(f"descriptions: {args.output}")
        return 0
    from finedefics_data.prompts import ObjectNoun

    splits = build_cub_records(args.cub_root, args.certainty, args.num_negatives, errors=errors)
    print(splits["train"].report.summary())
    _save_splits(splits, args.output, ObjectNoun.of("bird"))
    return 0


def _save_splits(splits: dict, output: str, noun=None) -> None:
    """Save the splits with ``save_to_disk``; the noun (if known) goes to the folder's data info."""
    import datasets

    from finedefics_data.schema import write_data_info

    dataset = datasets.DatasetDict({name: records.to_dataset() for name, records in splits.items()})
    dataset.save_to_disk(output)
    if noun is not None:
        write_data_info(output, noun)
    print(f"saved {', '.join(f'{k}: {len(v)} rows' for k, v in dataset.items())} to {output}")


# ----------------------------------------------------------------------------- describe
def _register_describe(commands) -> None:
    from .data_describe import register

    register(commands)


# ----------------------------------------------------------------------------- options
def _register_options(commands) -> None:
    from finedefics_data.option_sets import MINERS

    parser = commands.add_parser("options", help="FOCI-style multiple-choice option sets for a dataset split",
                                 description="Mine hard negatives and write FOCI option sets "
                                             "{groundtruth: [{image, options, groundtruth}]} for a dataset split.")
    parser.add_argument("data", help="a synthetic benchmark folder, a save_to_disk folder, or an imagefolder")
    parser.add_argument("--output", required=True, help="the FOCI JSON file to write")
    parser.add_argument("--split", default="test", help="split to build questions for (default test)")
    parser.add_argument("--miner", choices=MINERS, default="attributes",
                        help="attributes: overlap of the `attributes` column; confusion: --confusion file; "
                             "text-embeddings: cosine similarity of category names under --model")
    parser.add_argument("--confusion", help="FOCI results JSON (predictions with 'correct'/'predicted') or "
                                            "{'names': [...], 'matrix': [[...]]}")
    parser.add_argument("--model", help="Finedefics checkpoint for --miner text-embeddings")
    parser.add_argument("--num-options", type=int, default=4, help="options per question (default 4)")
    parser.add_argument("--image-root", help="write image paths relative to this folder (default: DATA)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seeds filler options for categories with too few negatives")
    parser.set_defaults(func=run_options)


def run_options(args) -> int:
    from finedefics_data.option_sets import mine_negatives, split_records, write_option_sets

    records = split_records(Path(args.data), args.split, Path(args.image_root or args.data))
    embed = _text_embedder(args.model) if args.miner == "text-embeddings" and args.model else None
    negatives = mine_negatives(args.miner, records, args.num_options - 1, confusion_file=args.confusion,
                               text_embedder=embed)
    count = write_option_sets(args.output, records, negatives, num_options=args.num_options, seed=args.seed)
    print(f"{args.output}: {count['questions']} questions over {count['categories']} categories")
    return 0


def _text_embedder(model_name_or_path: str):
    """Text embeddings of a checkpoint, loaded through evaluation's checked loader."""
    from finedefics_data.negatives import finedefics_text_embedder
    from finedefics_eval.loading import load_model

    return finedefics_text_embedder(*load_model(model_name_or_path))
