"""``--noun``, ``--noun-plural`` and ``--category-word``: how the objects are named in the questions, taken the same
way by ``data``, ``data describe``, ``init-model`` and ``eval`` (a module of its own, so those commands need not
import each other)."""

from __future__ import annotations


def add_noun_arguments(parser, where_from: str) -> None:
    """``--noun`` and ``--noun-plural``, as data csv, init-model and eval take them."""
    parser.add_argument("--noun", help=f"what the objects are called in the questions, e.g. car ({where_from})")
    parser.add_argument("--noun-plural", help="its plural, where adding -s/-es/-ies is wrong (e.g. aircraft)")
    parser.add_argument("--category-word",
                        help="what one category of the objects is called in the open-set question ('What is the "
                             "WORD of the car in the image?'); default by noun: bird species, car/vehicle model, "
                             "aircraft variant, dog/pet breed, flower species, food dish; other nouns species")


def noun_from_arguments(args):
    """The ``ObjectNoun`` of ``--noun`` / ``--noun-plural`` (shared by data, init-model and eval), or None."""
    from finedefics_data.prompts import ObjectNoun

    for given, flag in ((args.noun_plural, "--noun-plural"), (args.category_word, "--category-word")):
        if given and not args.noun:
            raise ValueError(f"{flag} needs --noun")
    return ObjectNoun.of(args.noun, args.noun_plural, args.category_word) if args.noun else None
