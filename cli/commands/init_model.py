"""``finedefics init-model [--family NAME] [--preset tiny|micro] --corpus DATA_DIR OUT``: a tiny starting model for
your own data, of any model family."""

from __future__ import annotations


class RegisteredFamilies:
    """The keys of ``modeling_finedefics.families.FAMILIES`` as argparse ``choices``, read when a value is checked
    or listed: the registry imports torch, and building the parser (``finedefics --help``) must not."""

    @staticmethod
    def _names() -> list[str]:
        from modeling_finedefics.families import FAMILIES

        return list(FAMILIES)

    def __contains__(self, name) -> bool:
        return name in self._names()

    def __iter__(self):
        return iter(self._names())


def register(subparsers) -> None:
    from .noun_arguments import add_noun_arguments

    parser = subparsers.add_parser(
        "init-model", help="build a tiny model and a tokenizer trained on your data's texts (CPU pipeline runs)",
        description="Build a tiny Finedefics model (random weights; the architecture of Idefics2-8B, or of another "
                    "family with --family) and a tokenizer "
                    "trained offline on the texts of the data folders (category names, descriptions, questions and "
                    "answers, and the questions training and evaluation ask with the data's noun). The noun is "
                    "stored in the model's config. A starting point to run the whole pipeline on a CPU, not a "
                    "pretrained model.",
    )
    parser.add_argument("output", help="folder to write the model and processor to (new or empty)")
    parser.add_argument("--corpus", metavar="DATA_DIR", action="append", required=True,
                        help="a `finedefics data` folder whose texts train the tokenizer (repeat for several, "
                             "e.g. the stage I and stage II data)")
    # A metavar, so that adding the argument does not list the choices (argparse would import the registry).
    parser.add_argument("--family", choices=RegisteredFamilies(), metavar="FAMILY", default="idefics2",
                        help="model family: %(choices)s (default idefics2); the others have one tiny size (~1M "
                             "parameters) with their own image and vocabulary sizes")
    parser.add_argument("--preset", choices=["micro", "tiny"], default=None,
                        help="micro (~1M parameters, tests) or tiny (~4M, the CPU demo); default tiny (idefics2)")
    add_noun_arguments(parser, "default: the noun the data folders record")
    parser.add_argument("--image-size", type=int, default=None, help="image side in pixels (idefics2; default 64)")
    parser.add_argument("--vocab-size", type=int, default=None,
                        help="tokenizer vocabulary size (idefics2; default 2048)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights (default 0)")
    parser.set_defaults(func=run)


def run(args) -> int:
    from finedefics_training.init_model import init_model

    from .noun_arguments import noun_from_arguments

    output = init_model(args.corpus, args.output, preset=args.preset, noun=noun_from_arguments(args),
                        image_size=args.image_size, vocab_size=args.vocab_size, seed=args.seed,
                        family=args.family)
    print(f"starting model written to {output}")
    return 0
