"""Benchmarks for 4-way fine-grained recognition: FOCI's six datasets, the synthetic benchmark, and any
image classification dataset (an imagefolder or a ``datasets`` dataset) with hard-negative options.

Every loader returns a :class:`Benchmark`: multiple-choice examples whose ``options[0]`` is the
ground truth (the option order shown to a model is chosen later, with a seed), the full list of
categories (for top-k over all of them), the FOCI question, and which categories are rare where the
dataset says so.

    bench = load_benchmark("bird-200", image_root="/data/CUB_200_2011")   # FOCI option file + your images
    bench = load_benchmark("runs/synth")                                  # synthetic benchmark folder
    bench = load_benchmark("my_imagefolder", split="test")               # options from the hard-negative miner

Questions name the objects with a noun (``prompts.ObjectNoun``): FOCI's datasets keep FOCI's own;
other benchmarks take the ``noun`` given (``finedefics eval`` passes ``--noun`` or the checkpoint's),
else the data folder's own (``finedefics_data.json``; "bird" for the synthetic benchmark), else "object".

Rare categories: where the evaluated rows do not say, the training data can (``train_data``): their
``is_rare`` column where any row sets it, else their counts (:func:`rare_by_counts`).

Images are opened lazily, one batch at a time. A missing image does not stop an evaluation: the
runner counts it, reports it and goes on (see ``Benchmark.missing_images``).
"""

from __future__ import annotations

import difflib
import json
import logging
import statistics
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from finedefics_data.prompts import DEFAULT_NOUN, ObjectNoun, multiple_choice_query, open_set_question
from finedefics_data.schema import read_jsonl
from finedefics_data.synth import load_categories

from .foci import (
    CHOICE_LETTERS,
    FOCI_DATASETS,
    OUTSIDE_ROOT_PROBLEM,
    OptionExample,
    check_options,
    escapes_image_root,
    foci_option_path,
    load_option_file,
)

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
NUM_OPTIONS = len(CHOICE_LETTERS)
# A category is rare when it has at most this share of the median category's training images.
RARE_MAX_SHARE = 0.5

# category -> similar categories, most similar first (used as is); or a miner computing that from
# the category names (used when the rows carry neither their own negatives nor attributes).
Negatives = Mapping[str, Sequence[str]] | Callable[[list[str]], Mapping[str, Sequence[str]]]


@dataclass
class Benchmark:
    """A multiple-choice recognition benchmark.

    Attributes:
        name: short name used in reports ("bird-200", "synth", a folder name).
        split: the dataset split evaluated.
        examples: the examples, ``options[0]`` being the ground truth.
        categories: every category name of the dataset (the candidates of top-k over all categories).
        query: FOCI's question for these objects (``prompts.multiple_choice_query``).
        open_set_question: the question asking the model to name the object (``prompts.open_set_question``).
        image_root: folder the examples' image paths are relative to (None for in-memory images).
        rare_categories: categories the dataset marks as rare, or None where it says nothing.
        display_name / dataset_type: how model cards name the dataset.
        source: where the benchmark was read from.
        options_source: where the wrong options come from (an option file, the rows' own
            ``neg_categories``, or a hard-negative miner).
    """

    name: str
    split: str
    examples: list[OptionExample]
    categories: list[str]
    query: str
    open_set_question: str
    image_root: Path | None = None
    rare_categories: frozenset[str] | None = None
    display_name: str | None = None
    dataset_type: str | None = None
    source: str = ""
    options_source: str = "option file"
    image_getter: Callable[[OptionExample], object] | None = field(default=None, repr=False)
    limit: int | None = None  # --limit, when it left examples out
    num_examples_before_limit: int | None = None

    def __post_init__(self):
        if not self.examples:
            raise ValueError(f"benchmark {self.name!r} ({self.source or 'no source'}, split {self.split!r}) "
                             "has no examples")
        unknown = sorted({e.groundtruth for e in self.examples} - set(self.categories))
        if unknown:
            raise ValueError(f"benchmark {self.name!r}: ground-truth labels missing from its categories: "
                             f"{unknown[:5]}")

    def __len__(self) -> int:
        return len(self.examples)

    def image_path(self, example: OptionExample) -> Path | None:
        """The image file of ``example``, or None when images are held in memory."""
        return None if self.image_getter else Path(self.image_root) / example.image

    def load_image(self, example: OptionExample):
        """The example's image as an RGB PIL image, checked as the processor checks it.

        Raises:
            FileNotFoundError: the file is missing.
            ValueError: naming the file (or example), when the image cannot be read, is truncated,
                is smaller than the processor accepts, or has more pixels than PIL agrees to decode.
        """
        from PIL import Image

        from modeling_finedefics.processing_finedefics import checked_rgb, read_image

        if self.image_getter is None:
            path = self.image_path(example)
            if not path.is_file():
                raise FileNotFoundError(f"image not found: {path}")
            return read_image(path, str(path))
        source = f"{self.source or self.name}, example {example.example_id}"
        try:
            image = self.image_getter(example)  # a dataset decodes here
        except Image.DecompressionBombError as error:
            raise ValueError(f"{source}: the image has too many pixels to decode safely ({error})") from error
        except OSError as error:
            raise ValueError(f"{source}: cannot read the image: {error}") from error
        return checked_rgb(image, f"{source}: the image")

    def missing_images(self) -> list[OptionExample]:
        """Examples whose image file does not exist (always empty for in-memory images)."""
        if self.image_getter is not None:
            return []
        return [example for example in self.examples if not self.image_path(example).is_file()]

    def describe(self) -> dict:
        """The benchmark's identity for a report."""
        return {"name": self.name, "split": self.split, "source": self.source, "query": self.query,
                "open_set_question": self.open_set_question, "options_source": self.options_source,
                "example_categories": self.categories[:3],
                "num_examples": len(self.examples), "num_categories": len(self.categories),
                "num_rare_categories": None if self.rare_categories is None else len(self.rare_categories),
                "display_name": self.display_name or self.name, "dataset_type": self.dataset_type or self.name,
                "limit": self.limit, "num_examples_before_limit": self.num_examples_before_limit}


# ----------------------------------------------------------------------------- entry point
def load_benchmark(spec: str, image_root: str | Path | None = None, split: str = "test",
                   negatives: Negatives | None = None, limit: int | None = None, noun: ObjectNoun | None = None,
                   train_data: str | Path | None = None, allow_images_outside_root: bool = False,
                   **kwargs) -> Benchmark:
    """Load a benchmark from ``spec``:

    - a FOCI dataset name (``bird-200``, ``car-196``, ...; ``foci:`` prefix allowed): the shipped option
      file, with images under ``image_root``;
    - a FOCI option file (``*.json``): with images under ``image_root`` (default: the file's folder);
    - a synthetic benchmark folder (``categories.json`` + ``foci_test.json``);
    - an imagefolder (``<split>/metadata.jsonl`` or ``<split>/<class>/*.jpg``) or a ``save_to_disk``
      dataset folder;
    - otherwise a ``datasets`` dataset name (needs network or a local cache).

    ``limit`` keeps the first examples only (a quick look, not a result). ``noun`` names the objects
    in the questions (FOCI's datasets keep FOCI's). ``train_data`` (a data folder) says which categories
    are rare where the benchmark does not (:func:`rare_categories_from_training`). An option file's image
    paths must stay inside ``image_root`` unless ``allow_images_outside_root``. Other keyword arguments go
    to the specific loader.
    """
    name = spec.removeprefix("foci:")
    path = Path(spec)
    if name in FOCI_DATASETS:
        if noun is not None:
            logger.info("%s keeps FOCI's question (%r), whatever the noun", name, FOCI_DATASETS[name].plural)
        benchmark = load_foci_benchmark(name, _required_root(image_root, name),
                                        allow_images_outside_root=allow_images_outside_root, **kwargs)
    elif spec.startswith("foci:"):
        raise ValueError(f"unknown FOCI dataset {name!r}; choose one of {', '.join(FOCI_DATASETS)}")
    elif path.suffix == ".json":
        benchmark = load_option_file_benchmark(path, image_root, noun=noun,
                                               allow_images_outside_root=allow_images_outside_root, **kwargs)
    elif path.is_dir() and (path / "categories.json").is_file():
        benchmark = load_synthetic_benchmark(path, split=split, negatives=negatives, noun=noun)
    elif path.is_dir() and ((path / "dataset_dict.json").is_file() or (path / "state.json").is_file()):
        benchmark = load_datasets_benchmark(str(path), split=split, negatives=negatives, noun=noun, **kwargs)
    elif path.is_dir():
        benchmark = load_imagefolder_benchmark(path, split=split, negatives=negatives, noun=noun,
                                               allow_images_outside_root=allow_images_outside_root, **kwargs)
    elif path.exists() or spec.startswith((".", "/")):
        raise FileNotFoundError(f"benchmark not found or not a folder: {spec}")
    else:
        benchmark = _load_named_dataset(spec, split=split, negatives=negatives, noun=noun, **kwargs)
    if train_data is not None:
        benchmark.rare_categories = rare_categories_from_training(train_data, benchmark.categories)
    return _limited(benchmark, limit)


def _load_named_dataset(spec: str, **kwargs) -> Benchmark:
    """A ``datasets`` dataset by name; a near-miss of a FOCI name or a name that cannot be loaded lists the known ones.

    Without this, a typo such as ``bird-201`` is looked up on the Hub and reported as a connection problem.
    """
    known = f"FOCI datasets: {', '.join(FOCI_DATASETS)}; or a benchmark folder, a FOCI option file (.json) or a " \
            "`datasets` dataset name"
    near = difflib.get_close_matches(spec, FOCI_DATASETS, n=1, cutoff=0.75)
    if near:
        raise ValueError(f"unknown benchmark {spec!r}: did you mean {near[0]!r}? ({known})")
    try:
        return load_datasets_benchmark(spec, **kwargs)
    except (ConnectionError, FileNotFoundError) as error:
        raise ValueError(f"unknown benchmark {spec!r}: not a local folder, and it could not be loaded as a `datasets` "
                         f"dataset ({error}); {known}") from error


def _questions(noun: ObjectNoun | None, folder: str | Path | None = None, default: ObjectNoun = DEFAULT_NOUN) -> dict:
    """``query`` and ``open_set_question`` for ``noun``, else the data folder's own noun, else ``default``."""
    if noun is None and folder is not None and Path(folder).is_dir():
        from finedefics_data.schema import data_noun

        noun = data_noun(folder)
    noun = noun or default
    return {"query": multiple_choice_query(noun), "open_set_question": open_set_question(noun)}


def _required_root(image_root, name: str) -> Path:
    if image_root is None:
        raise ValueError(f"FOCI dataset {name!r} needs --image-root: the folder its option file's image "
                         "paths (e.g. 'images/...jpg') are relative to")
    root = Path(image_root)
    if not root.is_dir():
        raise FileNotFoundError(f"image root not found: {root}")
    return root


def _limited(benchmark: Benchmark, limit: int | None) -> Benchmark:
    if limit is None or limit >= len(benchmark.examples):
        return benchmark
    if limit <= 0:
        raise ValueError(f"limit must be positive, got {limit}")
    # Recorded so that a report and a card built from it say the figure is over the first `limit` only.
    benchmark.limit, benchmark.num_examples_before_limit = limit, len(benchmark.examples)
    benchmark.examples = benchmark.examples[:limit]
    return benchmark


# ----------------------------------------------------------------------------- FOCI
def load_foci_benchmark(name: str, image_root: str | Path, max_per_label: int | None = None,
                        allow_images_outside_root: bool = False) -> Benchmark:
    """One of FOCI's six datasets: the shipped option file, images under ``image_root``.

    ``max_per_label`` keeps the first examples of each label, as FOCI's ``--max_examples`` does.
    """
    dataset = FOCI_DATASETS[name]
    benchmark = load_option_file_benchmark(foci_option_path(name), image_root, max_per_label=max_per_label,
                                           noun=dataset.noun, allow_images_outside_root=allow_images_outside_root)
    benchmark.name, benchmark.source = name, f"FOCI option file {foci_option_path(name).name}"
    benchmark.display_name, benchmark.dataset_type = dataset.display_name, dataset.dataset_type
    return benchmark


def load_option_file_benchmark(path: str | Path, image_root: str | Path | None = None,
                               max_per_label: int | None = None, noun: ObjectNoun | None = None,
                               allow_images_outside_root: bool = False) -> Benchmark:
    """Any option file in FOCI's format; the categories are its ground-truth labels and options.

    It says nothing about rare categories: pass the training data to :func:`load_benchmark`. Its image
    paths must stay inside the image root unless ``allow_images_outside_root``.
    """
    path = Path(path)
    examples = load_option_file(path, allow_images_outside_root=allow_images_outside_root)
    if max_per_label is not None:
        examples = _first_per_label(examples, max_per_label)
    categories = _ordered_unique(label for e in examples for label in [e.groundtruth, *e.options])
    return Benchmark(
        name=path.name.split("-ViT")[0].removesuffix(".json"), split="test", examples=examples,
        categories=categories, **_questions(noun),
        image_root=Path(image_root) if image_root is not None else path.parent, source=str(path),
        options_source=f"option file {path.name}",
    )


def _first_per_label(examples: list[OptionExample], max_per_label: int) -> list[OptionExample]:
    seen: dict[str, int] = {}
    kept = []
    for example in examples:
        seen[example.groundtruth] = seen.get(example.groundtruth, 0) + 1
        if seen[example.groundtruth] <= max_per_label:
            kept.append(example)
    return kept


# ----------------------------------------------------------------------------- synthetic
def load_synthetic_benchmark(folder: str | Path, split: str = "test", negatives: Negatives | None = None,
                             noun: ObjectNoun | None = None) -> Benchmark:
    """The synthetic benchmark folder: ``categories.json``, ``<split>/metadata.jsonl``, ``foci_test.json``.

    The test split uses ``foci_test.json`` (FOCI's option format); another split builds its options
    from the rows' ``neg_categories``. Rare categories are those with ``is_rare`` in ``categories.json``.
    """
    folder = Path(folder)
    categories = load_categories(folder)
    names = [c["name"] for c in categories]
    option_file = folder / f"foci_{split}.json"
    if option_file.is_file():
        examples, options_source = load_option_file(option_file), f"option file {option_file.name}"
        image_root = _option_image_root(folder, split, examples)
    else:
        rows = read_jsonl(folder / split / "metadata.jsonl")
        examples, options_source = _examples_from_rows(rows, folder / split / "metadata.jsonl", "category", names,
                                                       negatives)
        image_root = folder / split
    rare = frozenset(c["name"] for c in categories if c.get("is_rare"))
    return Benchmark(
        name=folder.name, split=split, examples=examples, categories=_ordered_unique(names),
        **_questions(noun, folder), image_root=image_root, rare_categories=rare,
        display_name=f"Finedefics synthetic birds ({folder.name})",
        dataset_type="finedefics-synthetic", source=str(folder), options_source=options_source,
    )


def _option_image_root(folder: Path, split: str, examples: list[OptionExample]) -> Path:
    """Option-file image paths are relative to the benchmark folder or to its split folder."""
    if (folder / examples[0].image).is_file() or not (folder / split / examples[0].image).is_file():
        return folder
    return folder / split


# ----------------------------------------------------------------------------- imagefolder
def load_imagefolder_benchmark(folder: str | Path, split: str = "test", label_column: str | None = None,
                               negatives: Negatives | None = None, noun: ObjectNoun | None = None,
                               rare_column: str = "is_rare", allow_images_outside_root: bool = False) -> Benchmark:
    """An imagefolder: ``<split>/metadata.jsonl`` (``file_name`` + a label column) or ``<split>/<class>/<image>``.

    Without a ``<split>`` folder the folder itself is the split. Options are the rows'
    ``neg_categories`` where present, else the hard negatives of ``negatives`` (default:
    :func:`hard_negatives_by_name` unless the rows carry ``attributes``). Categories marked in
    ``rare_column`` are reported as rare; where no row says, a ``train`` split beside the evaluated
    one does (:func:`rare_categories_from_training`). ``metadata.jsonl``'s image paths must stay inside the
    split folder unless ``allow_images_outside_root``.
    """
    folder = Path(folder)
    split_dir = folder / split if (folder / split).is_dir() else folder
    metadata = split_dir / "metadata.jsonl"
    if metadata.is_file():
        rows = read_jsonl(metadata)
        label_column = label_column or ("category" if "category" in rows[0] else "label")
    else:
        rows = _rows_from_class_folders(split_dir)
        label_column = "category"
    categories = _ordered_unique(str(row.get(label_column, "")) for row in rows)
    examples, options_source = _examples_from_rows(rows, metadata, label_column, categories, negatives,
                                                   allow_images_outside_root)
    rare = _rare_from_rows(rows, label_column, rare_column)
    if rare is None and split != "train" and (folder / "train").is_dir():
        rare = rare_categories_from_training(folder, categories)
    return Benchmark(
        name=folder.name, split=split, examples=examples, categories=categories, **_questions(noun, folder),
        image_root=split_dir, rare_categories=rare, source=str(folder), options_source=options_source,
    )


def _rows_from_class_folders(split_dir: Path) -> list[dict]:
    rows = [{"file_name": image.relative_to(split_dir).as_posix(), "category": class_dir.name}
            for class_dir in sorted(p for p in split_dir.iterdir() if p.is_dir())
            for image in sorted(class_dir.iterdir()) if image.suffix.lower() in IMAGE_SUFFIXES]
    if not rows:
        raise ValueError(f"{split_dir} holds no images in class folders (<class>/<image>) and no metadata.jsonl: "
                         "the benchmark would be empty")
    return rows


def _examples_from_rows(rows: list[dict], where: Path, label_column: str, categories: list[str],
                        negatives: Negatives | None,
                        allow_images_outside_root: bool = False) -> tuple[list[OptionExample], str]:
    """Multiple-choice examples from dataset rows: own ``neg_categories`` first, then mined negatives.

    Returns the examples and a description of where their wrong options came from.
    """
    short = [row for row in rows if len(_row_negatives(row, row.get(label_column))) < NUM_OPTIONS - 1]
    mined, source = _mined_negatives(rows, label_column, categories, negatives) if short else ({}, "")
    examples = []
    for index, row in enumerate(rows):
        place = f"{where}: row {index}"
        label = row.get(label_column)
        if not isinstance(label, str) or not label.strip():
            raise ValueError(f"{place}: field {label_column!r} must be a non-empty category name, got {label!r}")
        image = row.get("file_name") or row.get("image")
        if not isinstance(image, str) or not image:
            raise ValueError(f"{place}: field 'file_name' must name the image file, got {image!r}")
        if not allow_images_outside_root and escapes_image_root(image):
            raise ValueError(f"{place}: field 'file_name' {image!r} {OUTSIDE_ROOT_PROBLEM}")
        distractors = _distractors(_row_negatives(row, label), mined.get(label, ()), label)
        if len(distractors) < NUM_OPTIONS - 1:
            raise ValueError(f"{place}: only {len(distractors)} wrong options for {label!r}; need "
                             f"{NUM_OPTIONS - 1} (the dataset has {len(categories)} categories)")
        options = [label, *distractors[: NUM_OPTIONS - 1]]
        check_options(options, label, place)
        examples.append(OptionExample(example_id=str(index), image=image, groundtruth=label, options=options))
    own = "the rows' neg_categories"
    return examples, own if not short else (f"{own}, topped up by {source}" if len(short) < len(rows) else source)


def _row_negatives(row: dict, label) -> list[str]:
    return [n for n in (row.get("neg_categories") or []) if isinstance(n, str) and n != label]


def _distractors(own: Sequence[str], mined: Sequence[str], label: str) -> list[str]:
    return _ordered_unique(n for n in [*own, *mined] if n != label)


def _rare_from_rows(rows: list[dict], label_column: str, rare_column: str) -> frozenset[str] | None:
    if not any(rare_column in row for row in rows):
        return None
    return frozenset(str(row[label_column]) for row in rows if row.get(rare_column))


# ----------------------------------------------------------------------------- datasets
def load_datasets_benchmark(name_or_path: str, split: str = "test", image_column: str = "image",
                            label_column: str | None = None, negatives: Negatives | None = None,
                            noun: ObjectNoun | None = None) -> Benchmark:
    """A ``datasets`` image-classification dataset (a ``save_to_disk`` folder or a dataset name).

    Labels are ``label_column`` (default: ``category`` where the dataset has one, as ``finedefics data``
    writes it, else ``label``): a ``ClassLabel`` (its names are the categories) or strings. Options are
    the rows' own ``neg_categories`` where they have them, topped up by the hard-negative miner over the
    category names (``negatives``; default :func:`hard_negatives_by_name`). Rare categories come from a
    ``train`` split of the same dataset, where there is one (:func:`rare_categories_from_training`).
    """
    dataset = _load_split(name_or_path, split)
    if label_column is None:
        label_column = "category" if "category" in dataset.column_names else "label"
    for column in (image_column, label_column):
        if column not in dataset.column_names:
            raise ValueError(f"{name_or_path} ({split}): no column {column!r}; columns are {dataset.column_names}")
    labels = _label_names(dataset, label_column)
    categories = _ordered_unique(labels)
    own = dataset["neg_categories"] if "neg_categories" in dataset.column_names else [[]] * len(labels)
    rows = [{"file_name": f"{split}/{index}", "category": label, "neg_categories": list(negs or [])}
            for index, (label, negs) in enumerate(zip(labels, own))]
    examples, options_source = _examples_from_rows(rows, Path(name_or_path), "category", categories, negatives)
    images = dataset.select_columns([image_column])

    def image_getter(example: OptionExample):
        return images[int(example.example_id)][image_column]

    rare = None
    if split != "train" and Path(name_or_path).is_dir() and _has_split(Path(name_or_path), "train"):
        rare = rare_categories_from_training(name_or_path, categories)
    return Benchmark(
        name=Path(name_or_path).name, split=split, examples=examples, categories=categories,
        **_questions(noun, name_or_path), rare_categories=rare,
        source=name_or_path, options_source=options_source, image_getter=image_getter,
    )


def _load_split(name_or_path: str, split: str):
    import datasets

    if Path(name_or_path).is_dir():
        loaded = datasets.load_from_disk(name_or_path)
    else:
        loaded = datasets.load_dataset(name_or_path)
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise ValueError(f"{name_or_path} has no split {split!r}; splits are {list(loaded)}")
        loaded = loaded[split]
    if len(loaded) == 0:
        raise ValueError(f"{name_or_path} ({split}) has no rows: the benchmark would be empty")
    return loaded


def _label_names(dataset, label_column: str) -> list[str]:
    feature = dataset.features[label_column]
    values = dataset[label_column]
    if hasattr(feature, "int2str"):
        return [feature.int2str(int(value)) for value in values]
    for index, value in enumerate(values):
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"row {index}: field {label_column!r} must be a category name or a ClassLabel, "
                             f"got {value!r}")
    return list(values)


# ----------------------------------------------------------------------------- rare categories
def rare_categories_from_training(train_data: str | Path, categories: Sequence[str], split: str = "train",
                                  max_share: float = RARE_MAX_SHARE) -> frozenset[str]:
    """The categories the training data make rare: their ``is_rare`` column where any row sets it, else
    the categories with at most ``max_share`` of the median category's training images
    (:func:`rare_by_counts`; a category of ``categories`` without any training image counts 0).

    ``train_data``: a synthetic benchmark folder, a ``save_to_disk`` folder, or an imagefolder.
    """
    labels, flagged = _training_labels(Path(train_data), split)
    if flagged:
        return frozenset(flagged)
    counts = Counter({name: 0 for name in categories})
    counts.update(labels)
    rare = rare_by_counts(counts, max_share)
    logger.info("%s: %d of %d categories are rare (<= %.0f%% of the median of %g training images)", train_data,
                len(rare), len(counts), 100 * max_share, statistics.median(counts.values()))
    return rare


def rare_by_counts(counts: Mapping[str, int], max_share: float = RARE_MAX_SHARE) -> frozenset[str]:
    """Categories whose count is at most ``max_share`` times the median count."""
    if not counts:
        return frozenset()
    limit = max_share * statistics.median(counts.values())
    return frozenset(name for name, count in counts.items() if count <= limit)


def _training_labels(folder: Path, split: str) -> tuple[list[str], set[str]]:
    """(category of every training row, the categories some row marks ``is_rare``)."""
    if not folder.is_dir():
        raise FileNotFoundError(f"training data folder not found: {folder}")
    if (folder / "categories.json").is_file():
        categories = load_categories(folder)
        labels = [c["name"] for c in categories for _ in range(int(c.get("n_train") or 0))]
        return labels, {c["name"] for c in categories if c.get("is_rare")}
    if (folder / "dataset_dict.json").is_file() or (folder / "state.json").is_file():
        dataset = _load_split(str(folder), split)
        column = "category" if "category" in dataset.column_names else "label"
        labels = _label_names(dataset, column)
        flags = dataset["is_rare"] if "is_rare" in dataset.column_names else [False] * len(labels)
        return labels, {label for label, rare in zip(labels, flags) if rare}
    split_dir = folder / split if (folder / split).is_dir() else folder
    rows = read_jsonl(split_dir / "metadata.jsonl") if (split_dir / "metadata.jsonl").is_file() \
        else _rows_from_class_folders(split_dir)
    column = "category" if "category" in rows[0] else "label"
    return [str(row.get(column)) for row in rows], {str(row.get(column)) for row in rows if row.get("is_rare")}


def _has_split(folder: Path, split: str) -> bool:
    """Whether a ``save_to_disk`` DatasetDict folder holds ``split``."""
    index = folder / "dataset_dict.json"
    if not index.is_file():
        return (folder / split).is_dir()
    return split in json.loads(index.read_text(encoding="utf-8")).get("splits", [])


# ----------------------------------------------------------------------------- hard negatives
def _mined_negatives(rows: list[dict], label_column: str, categories: list[str],
                     negatives: Negatives | None) -> tuple[Mapping[str, Sequence[str]], str]:
    """Hard negatives for rows without their own.

    A mapping given as ``negatives`` is used as is. Otherwise the rows' ``attributes`` are mined
    (attribute overlap), else the miner given as ``negatives`` is called with the category names,
    else names are compared as strings.
    """
    if negatives is not None and not callable(negatives):
        return negatives, "the given hard negatives"
    attributes = _category_attributes(rows, label_column)
    if attributes is not None:
        from finedefics_data.negatives import mine_by_attributes

        return mine_by_attributes(attributes, k=NUM_OPTIONS - 1), "hard negatives mined by attribute overlap"
    if callable(negatives):
        return negatives(categories), f"hard negatives from {getattr(negatives, '__name__', 'the given miner')}"
    logger.warning("no hard negatives given and no attributes to mine them from: options are the most similar "
                   "category NAMES (pass negatives=..., e.g. mined with a model's text embeddings)")
    return hard_negatives_by_name(categories), "hard negatives by name similarity"


def _category_attributes(rows: list[dict], label_column: str) -> dict[str, dict] | None:
    """Per category, the union of its rows' visible attributes; None unless every row has some."""
    table: dict[str, dict] = {}
    for row in rows:
        attributes = row.get("attributes")
        if isinstance(attributes, str):
            attributes = json.loads(attributes) if attributes.strip() else None
        if not isinstance(attributes, dict) or not attributes:
            return None
        table.setdefault(str(row[label_column]), {}).update(attributes)
    return table


def hard_negatives_by_name(categories: list[str], k: int = NUM_OPTIONS - 1) -> dict[str, list[str]]:
    """For each category, the ``k`` other names most similar as strings (``difflib`` ratio), ties by name.

    A model-free fallback: it finds siblings that share a word ("Laysan Albatross" / "Sooty
    Albatross"), nothing more. Prefer attributes or a model's text embeddings
    (``finedefics_data.negatives``).
    """
    ranked = {}
    for name in categories:
        others = [other for other in categories if other != name]
        others.sort(key=lambda other: (-difflib.SequenceMatcher(None, name.lower(), other.lower()).ratio(), other))
        ranked[name] = others[:k]
    return ranked


def _ordered_unique(values) -> list[str]:
    return list(dict.fromkeys(values))


__all__ = [
    "Benchmark", "hard_negatives_by_name", "load_benchmark", "load_datasets_benchmark", "load_foci_benchmark",
    "load_imagefolder_benchmark", "load_option_file_benchmark", "load_synthetic_benchmark", "rare_by_counts",
    "rare_categories_from_training",
]
