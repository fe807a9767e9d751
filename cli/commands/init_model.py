"""``finedefics init-model --preset tiny|micro --corpus DATA_DIR OUT``: a tiny starting model for your own data."""

from __future__ import annotations


def register(subparsers) -> None:
    from .data import add_noun_arguments

    parser = subparsers.add_parser(
        "init-model", help="build a tiny model and a tokenizer trained on your data's texts (CPU pipeline runs)",
        description="Build a tiny Finedefics model (random weights, the architecture of Idefics2-8B) and a tokenizer "
                    "trained offline on the texts of the data folders (category names, descriptions, questions and "
                    "answers, and the questions training and evaluation ask with the data's noun). The noun is "
                    "stored in the model's config. A starting point to run the whole pipeline on a CPU, not a "
                    "pretrained model.",
    )
    parser.add_argument("output", help="folder to write the model and processor to (new or empty)")
    parser.add_argument("--corpus", metavar="DATA_DIR", action="append", required=True,
                        help="a `finedefics data` folder whose texts train the tokenizer (repeat for several, "
                             "e.g. the stage I and stage II data)")
    parser.add_argument("--preset", choices=["micro", "tiny"], default="tiny",
                        help="micro (~1M parameters, tests) or tiny (~4M, the CPU demo); default tiny")
    add_noun_arguments(parser, "default: the noun the data folders record")
    parser.add_argument("--image-size", type=int, default=64, help="image side in pixels (default 64)")
    parser.add_argument("--vocab-size", type=int, default=2048, help="tokenizer vocabulary size (default 2048)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights (default 0)")
    parser.set_defaults(func=run)


def run(args) -> int:
    from finedefics_training.init_model import init_model
    from .data import noun_from_arguments

    output = init_model(args.corpus, args.output, preset=args.preset, noun=noun_from_arguments(args),
                        image_size=args.image_size, vocab_size=args.vocab_size, seed=args.seed)
    print(f"starting model written to {output}")
    return 0
