"""Loading a benchmark folder: its categories, the metadata of a split (validated), which splits it holds,
and the whole benchmark as a ``datasets.DatasetDict``."""

from __future__ import annotations

import json
from pathlib import Path

from ..schema import read_jsonl, read_text, validate_record
from .drawing import SPLITS


def _require(path: Path, what: str) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: {what} (build a benchmark with `finedefics data synth DIR`)")
    return path


def load_categories(data_dir: str | Path) -> list[dict]:
    """``categories.json`` of a benchmark folder, checked (a list of objects with a ``name``), sorted by label."""
    path = _require(Path(data_dir) / "categories.json", "not a synthetic benchmark folder")
    try:
        categories = json.loads(read_text(path))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from error
    if not isinstance(categories, list) or not categories:
        raise ValueError(f"{path}: expected a non-empty list of categories")
    for index, category in enumerate(categories):
        if not isinstance(category, dict) or not isinstance(category.get("name"), str) or not category["name"].strip():
            raise ValueError(f"{path}: category {index}: field 'name' must be a non-empty string")
    return sorted(categories, key=lambda category: category.get("label", 0))


def load_metadata(data_dir: str | Path, split: str) -> list[dict]:
    """The metadata rows of one split, each validated as a training record (errors name the file and line)."""
    path = _require(Path(data_dir) / split / "metadata.jsonl", f"no {split} split")

    def check_row(row: dict, where: str) -> None:
        validate_record({**row, "image": row.get("file_name")}, source=str(path), row=where)

    return read_jsonl(path, check_row=check_row)


def benchmark_splits(data_dir: str | Path) -> list[str]:
    """The splits a benchmark folder holds (benchmarks made before version 2 have no validation split)."""
    return [split for split in SPLITS if (Path(data_dir) / split / "metadata.jsonl").is_file()] or ["train", "test"]


def load_synthetic_dataset(data_dir: str | Path):
    """The benchmark as a ``datasets.DatasetDict`` with ``train``, ``test`` and (when drawn) ``validation`` splits.

    Columns: ``image`` (PIL), ``category``, ``label``, ``attribute``, ``attributes`` (JSON string),
    ``neg_categories`` / ``neg_attributes`` (lists), ``genus``, ``is_rare``. Metadata rows are
    validated first, so a broken row is reported with its file and line.
    """
    import datasets

    data_dir = Path(data_dir)
    load_categories(data_dir)
    for split in benchmark_splits(data_dir):
        load_metadata(data_dir, split)
    features = datasets.Features({
        "image": datasets.Image(), "category": datasets.Value("string"), "label": datasets.Value("int64"),
        "attribute": datasets.Value("string"), "attributes": datasets.Value("string"),
        "neg_categories": datasets.List(datasets.Value("string")),
        "neg_attributes": datasets.List(datasets.Value("string")),
        "genus": datasets.Value("string"), "is_rare": datasets.Value("bool"),
    })
    return datasets.load_dataset("imagefolder", data_dir=str(data_dir), features=features)


# The name this function had before evaluation's ``finedefics_eval.load_benchmark`` (which returns a
# ``Benchmark`` of multiple-choice questions, not a ``DatasetDict``) made it ambiguous; kept for old imports.
load_benchmark = load_synthetic_dataset
