"""``finedefics data describe INPUT --output DIR``: attribute descriptions for images that have none.

Registered under ``finedefics data`` (``data.py``); the work is ``finedefics_data.describe_run``.
"""

from __future__ import annotations

import argparse

DESCRIPTION = """\
Describe a labelled image folder the way the Finedefics paper does, with no annotations: an image-text-to-text
model answers one question per attribute for each image, the answers are summarised into one sentence per image
(by --summary-model, or a template sentence), and hard negatives are mined from the described attribute values.

INPUT is a folder with one subfolder per category (train/ and test/ split folders, or the category folders
directly), or a `finedefics data` folder. The output folder is a dataset that `finedefics train --dataset_dir`,
`two-stage` and `demo --data` read directly, with describe_report.json and describe_answers.jsonl beside it.
Every answer is cached in the output folder: with --resume, a rerun or an interrupted run asks only what is
missing. Under `accelerate launch` / `torchrun` each process describes its share of the images and rank 0 writes
the same output one process would."""


def register(commands) -> None:
    parser = commands.add_parser("describe", help="attribute descriptions for a labelled image folder, by models",
                                 description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("input", metavar="INPUT", help="image folder (one subfolder per category) or data folder")
    parser.add_argument("--output", required=True, help="the dataset folder to write (new, or an earlier run's "
                                                        "with --resume)")
    parser.add_argument("--vqa-model", required=True,
                        help="image-text-to-text model (folder or Hub id) that answers the attribute questions")
    parser.add_argument("--vqa-revision", help="Hub revision of --vqa-model (default: its main branch)")
    parser.add_argument("--attributes", help='the attributes to ask about, comma-separated: "body colour,wheels"')
    parser.add_argument("--attribute-model", help="text LLM that proposes the attributes instead")
    parser.add_argument("--summary-model", help="text LLM that summarises each image's answers into one sentence "
                                                "(default: a template sentence)")
    from .noun_arguments import add_noun_arguments

    add_noun_arguments(parser, "used in the questions; default: the data folder's, else 'object'")
    parser.add_argument("--batch-size", type=int, default=8, help="questions per generation call (default 8)")
    parser.add_argument("--max-images", type=int, help="at most this many images per split, taken in turn from each "
                                                       "category (for a quick look)")
    parser.add_argument("--splits", help='the splits to describe and write, comma-separated: "train" (default: '
                                         "every split of INPUT)")
    parser.add_argument("--num-negatives", type=int, default=3, help="hard negatives per category (default 3)")
    parser.add_argument("--taxonomy", metavar="FILE.json",
                        help="category groups ({category: group} or {group: [categories]}): negatives are taken "
                             "within the group first")
    parser.add_argument("--max-new-tokens", type=int, default=16, help="longest answer, in tokens (default 16)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default: cuda when present)")
    parser.add_argument("--resume", action="store_true",
                        help="continue or redo the run already in --output, reusing its cached answers")
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="run code shipped in a model's folder (only for models you trust)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run_describe)


def run_describe(args) -> int:
    from finedefics_data.describe_run import DescribeSettings, describe_folder, read_taxonomy, summary_lines

    from .noun_arguments import noun_from_arguments

    if args.max_images is not None and args.max_images < 1:
        raise ValueError(f"--max-images must be at least 1, got {args.max_images}")
    if args.num_negatives < 1:
        raise ValueError(f"--num-negatives must be at least 1, got {args.num_negatives}")
    if args.attributes is not None and args.attribute_model:
        raise ValueError("give either --attributes or --attribute-model, not both")
    settings = DescribeSettings(
        vqa_model=args.vqa_model, revision=args.vqa_revision,
        attributes=args.attributes.split(",") if args.attributes is not None else None,
        attribute_model=args.attribute_model, summary_model=args.summary_model, noun=noun_from_arguments(args),
        batch_size=args.batch_size, max_images=args.max_images, num_negatives=args.num_negatives,
        splits=[split.strip() for split in args.splits.split(",") if split.strip()] if args.splits else None,
        taxonomy=read_taxonomy(args.taxonomy) if args.taxonomy else None, max_new_tokens=args.max_new_tokens,
        trust_remote_code=args.trust_remote_code, device=args.device, progress=not args.no_progress)
    report = describe_folder(args.input, args.output, settings, resume=args.resume)
    if report is None:
        return 0  # a rank > 0 of a launch: rank 0 wrote the folder and prints the summary
    print("\n".join(summary_lines(report)))
    print(f"saved {', '.join(f'{split}: {n} images' for split, n in report['splits'].items())} to {args.output} "
          f"(report: {args.output}/describe_report.json)")
    return 0
