"""The data a demo runs on: the embedded synthetic benchmark, or any folder written by ``finedefics data``.

``DemoData`` gives the demo what it needs whatever the source: the splits (``train``, ``test``, and a
``validation`` split for choosing settings), the categories with a description each, which are rare,
the objects' noun, the folder the trainer reads, and a FOCI-style benchmark per split for evaluation.

A synthetic benchmark folder is used as it is. A ``save_to_disk`` folder (``finedefics data csv`` /
``imagefolder`` / ``cub``) is evaluated on its own test split; a split it lacks (validation; test only when it
has none) is carved from its training rows, per category and with a fixed seed (every category keeps at
least one training row); the carved copy is saved next to the demo's outputs and is what the variants train
on. Where each split came from is stated in the report (:meth:`DemoData.split_lines`).
"""

from __future__ import annotations

import json
import logging
import random
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from .plan import DemoPlan

# The logger keeps the name of the former module finedefics_training.demo_data, so console lines read as before.
logger = logging.getLogger("finedefics_training.demo_data")

DEFAULT_IMAGE_SIZE = 64
CARVE_SEED = 0
CARVED_SHARE = {"test": 0.2, "validation": 0.1}
OWN_SPLIT = "the dataset's own"
FEW_TEST_IMAGES = 5  # a category with fewer test images than this gets a warning: its accuracy is mostly noise


@dataclass
class DemoData:
    source: Path
    training_dir: Path
    splits: dict
    categories: list[dict]
    noun: object = None  # an ObjectNoun
    synth_config: object | None = None
    split_origins: dict = field(default_factory=dict)  # split -> where it came from, in words
    _benchmarks: dict = field(default_factory=dict, repr=False)

    # ----------------------------------------------------------------- opening
    @classmethod
    def open(cls, folder: Path, prepared_dir: Path) -> "DemoData":
        if not folder.is_dir():
            raise FileNotFoundError(f"demo data folder not found: {folder} (make one with `finedefics data ...`)")
        from finedefics_data.folders import how_to_prepare, what_folder_is

        kind = what_folder_is(folder)
        if kind == "synthetic":
            data = cls._synthetic(folder)
        elif kind == "dataset":
            data = cls._saved(folder, prepared_dir)
        else:
            commands = how_to_prepare(folder)
            raise ValueError(f"{folder} is not a dataset folder (dataset_dict.json) nor a synthetic benchmark "
                             f"(categories.json + config.json)"
                             + (f"; it holds {_FOLDER_WORDS[kind]}: make the dataset folder with\n{commands}\n"
                                "then run `finedefics demo --data` on the --output folder" if commands else
                                "; make one with `finedefics data csv` (reference CSVs) or `finedefics data "
                                "imagefolder` (train/ and test/ image folders)"))
        data.check_validation_split()
        return data

    def check_validation_split(self) -> None:
        """The demo's settings are chosen on a validation split: refuse data without one (before any training)."""
        validation = self.splits.get("validation")
        if validation is not None and len(validation) > 0:
            return
        state = "an empty validation split" if validation is not None else \
            f"no validation split (has {', '.join(sorted(self.splits))})"
        fix = ("regenerate it with `finedefics data synth` (version 2 draws validation images; "
               "validation_per_category must be at least 1)" if self.synth_config is not None else
               "give every category at least two training rows, so that validation rows can be carved from them")
        raise ValueError(f"demo data folder {self.source} has {state}: the demo needs one for choosing settings "
                         f"without looking at the test split; {fix}")

    @classmethod
    def _synthetic(cls, folder: Path) -> "DemoData":
        from finedefics_data.schema import data_noun
        from finedefics_data.synth import SynthConfig, load_categories, load_synthetic_dataset

        settings = json.loads((folder / "config.json").read_text())
        settings.pop("version", None)
        return cls(source=folder, training_dir=folder, splits=dict(load_synthetic_dataset(folder)),
                   categories=load_categories(folder), noun=data_noun(folder), synth_config=SynthConfig(**settings))

    @classmethod
    def _saved(cls, folder: Path, prepared_dir: Path) -> "DemoData":
        import datasets

        from finedefics_data.prompts import DEFAULT_NOUN
        from finedefics_data.schema import DATA_INFO_FILE, data_noun

        splits = dict(datasets.load_from_disk(str(folder)))
        if "train" not in splits:
            raise ValueError(f"{folder} has no train split (has {sorted(splits)})")
        training_dir = folder
        origins = {split: OWN_SPLIT for split in splits}
        missing = [split for split in CARVED_SHARE if split not in splits]
        origins.update({split: f"carved from the training rows ({CARVED_SHARE[split]:.0%} per category, seed "
                               f"{CARVE_SEED})" for split in missing})
        if missing:
            splits.update(carve(splits["train"], missing))
            if not (prepared_dir / "dataset_dict.json").is_file():
                datasets.DatasetDict(splits).save_to_disk(str(prepared_dir))
                if (folder / DATA_INFO_FILE).is_file():  # the data's noun travels with the carved copy
                    shutil.copy(folder / DATA_INFO_FILE, prepared_dir / DATA_INFO_FILE)
            splits = dict(datasets.load_from_disk(str(prepared_dir)))
            training_dir = prepared_dir
            logger.warning("%s has no %s split: carved from its training rows (%s per category, seed %d)", folder,
                           " / ".join(missing), ", ".join(f"{CARVED_SHARE[s]:.0%} {s}" for s in missing), CARVE_SEED)
        data = cls(source=folder, training_dir=training_dir, splits=splits,
                   categories=_categories_from_rows(splits["train"]), noun=data_noun(folder) or DEFAULT_NOUN,
                   split_origins=origins)
        data.warn_few_test_images()
        return data

    # ----------------------------------------------------------------- splits
    def few_test_images(self, split: str = "test") -> dict[str, int]:
        """Categories with fewer than :data:`FEW_TEST_IMAGES` images in ``split``, with their count."""
        counts = Counter(self.splits[split]["category"]) if split in self.splits else Counter()
        return {c["name"]: counts[c["name"]] for c in self.categories if counts[c["name"]] < FEW_TEST_IMAGES}

    def warn_few_test_images(self, split: str = "test") -> None:
        few = self.few_test_images(split)
        if few:
            shown = ", ".join(f"{name} ({count})" for name, count in list(few.items())[:5])
            logger.warning("%d of %d categories have fewer than %d %s images (%s%s): their accuracies are mostly "
                           "noise", len(few), len(self.categories), FEW_TEST_IMAGES, split, shown,
                           " ..." if len(few) > 5 else "")

    def split_lines(self, split: str) -> list[str]:
        """The report's account of the splits: sizes, where each came from, the rare slice's n, thin categories."""
        lines = [f"- {name}: {len(table)} rows, {self.split_origins.get(name, OWN_SPLIT)}"
                 for name, table in self.splits.items()]
        counts = Counter(self.splits[split]["category"])
        rare = sorted(self.rare)
        lines.append(f"- rare slice of the {split} split: {len(rare)} categories, n = {sum(counts[r] for r in rare)} "
                     f"images (common: n = {sum(counts.values()) - sum(counts[r] for r in rare)})")
        few = self.few_test_images(split)
        if few:
            lines.append(f"- warning: {len(few)} categories have fewer than {FEW_TEST_IMAGES} {split} images ("
                         + ", ".join(f"{name} {count}" for name, count in list(few.items())[:10])
                         + (" ..." if len(few) > 10 else "") + "): their per-category accuracies are mostly noise")
        return lines

    # ----------------------------------------------------------------- facts
    @property
    def image_size(self) -> int:
        """The tiny model's input size: the benchmark's own, else the tiny presets' 64 px."""
        return self.synth_config.image_size if self.synth_config is not None else DEFAULT_IMAGE_SIZE

    @property
    def rare(self) -> set[str]:
        return {c["name"] for c in self.categories if c.get("is_rare")}

    @property
    def parse(self):
        """The description parser when the data have structured attributes (synthetic), else None."""
        if self.synth_config is None:
            return None
        from finedefics_data.synth import parse_description

        return parse_description

    def identity(self) -> dict:
        """What makes two data sources the same for the base model (the synthetic generator settings)."""
        if self.synth_config is not None:
            from dataclasses import asdict

            return {"synthetic": asdict(self.synth_config)}
        return {"folder": str(self.source.resolve())}

    def negatives(self) -> dict[str, list[str]]:
        """Per category, its hard negatives (most similar first): the benchmark's own, else its rows' first."""
        if all(c.get("negatives") for c in self.categories):
            return {c["name"]: list(c["negatives"]) for c in self.categories}
        train = self.splits["train"]
        found: dict[str, list[str]] = {}
        if "neg_categories" in train.column_names:
            for category, negatives in zip(train["category"], train["neg_categories"]):
                if negatives and category not in found:
                    found[category] = list(negatives)
        return found

    def distinguishing(self) -> dict[str, list[str]]:
        """Per category, the attributes that set it apart from its siblings (synthetic data only)."""
        if self.synth_config is None:
            return {}
        from finedefics_data.synth import distinguishing_attributes

        return {c["name"]: distinguishing_attributes(c, self.categories) for c in self.categories}

    def text_corpus(self) -> list[str]:
        """The synthetic benchmark's texts (all splits, attribute words, prompts); other data: see ``init_model``."""
        from finedefics_data.synth import text_corpus

        return text_corpus(self.source)

    def spread_rows(self, split: str, limit: int) -> list[dict]:
        """Up to ``limit`` rows of ``split`` spread evenly over it (so every category is represented)."""
        table = self.splits[split]
        step = max(1, len(table) // max(1, limit))
        return [table[i] for i in range(0, len(table), step)][:limit]

    def benchmark(self, split: str):
        """The split as a 4-way benchmark: options are each row's hard negatives, rare categories marked."""
        if split not in self._benchmarks:
            from finedefics_eval.benchmarks import load_benchmark

            self._benchmarks[split] = load_benchmark(str(self.training_dir), split=split, noun=self.noun)
        return self._benchmarks[split]


_FOLDER_WORDS = {"reference": "the reference release's CSVs", "imagefolder": "image folders",
                 "unknown": "no data this demo reads"}


# ----------------------------------------------------------------------------- helpers
def carve(train, splits: list[str]) -> dict:
    """Per-category, seeded carving of ``splits`` out of ``train``; returns the new splits and the rest as train."""
    by_category: dict[str, list[int]] = {}
    for index, category in enumerate(train["category"]):
        by_category.setdefault(category, []).append(index)
    rng = random.Random(CARVE_SEED)
    taken: dict[str, list[int]] = {split: [] for split in splits}
    kept = []
    for category in sorted(by_category):
        indices = by_category[category][:]
        rng.shuffle(indices)
        for split in splits:
            count = min(len(indices) - 1, max(1, round(CARVED_SHARE[split] * len(by_category[category]))))
            taken[split] += indices[:max(0, count)]
            indices = indices[max(0, count):]
        kept += indices
    carved = {split: train.select(sorted(rows)) for split, rows in taken.items()}
    carved["train"] = train.select(sorted(kept))
    return carved


def _categories_from_rows(train) -> list[dict]:
    """Categories of a dataset without ``categories.json``: descriptions from the rows, rare from the counts."""
    from finedefics_eval.benchmarks import rare_by_counts

    from .base import category_descriptions

    counts = Counter(train["category"])
    descriptions = category_descriptions(train)
    marked = set()
    if "is_rare" in train.column_names:
        marked = {c for c, rare in zip(train["category"], train["is_rare"]) if rare}
    rare = marked or rare_by_counts(counts)
    return [{"name": name, "description": descriptions.get(name, name), "attributes": {}, "is_rare": name in rare,
             "n_train": counts[name]} for name in sorted(counts)]


def make_data(data_dir: Path, plan: DemoPlan) -> None:
    """The embedded synthetic benchmark, of the plan's ``synth`` settings, written to ``data_dir``."""
    from finedefics_data.synth import SynthConfig, generate_benchmark

    generate_benchmark(data_dir, SynthConfig(**plan.synth), progress=False, overwrite=True)
