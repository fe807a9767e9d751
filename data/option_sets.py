"""FOCI-style multiple-choice option sets for a dataset split (``finedefics data options``).

A split's rows (category, attributes, image path) -> hard negatives per category, mined by attribute
overlap, a confusion matrix or text embeddings -> ``{groundtruth: [{image, options, groundtruth}]}``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from . import negatives as miners
from .readers import category_attributes

MINERS = ("attributes", "confusion", "text-embeddings")


def split_records(data: Path, split: str, image_root: Path) -> list[dict]:
    """``category``, ``attributes`` and an image path (relative to ``image_root``) per row of a split.

    ``data`` is a synthetic benchmark folder, a ``save_to_disk`` folder or an imagefolder.
    """
    import datasets

    if not data.is_dir():
        raise FileNotFoundError(f"{data} is not a folder")
    if (data / "categories.json").is_file():
        from .synth import load_synthetic_dataset

        splits = load_synthetic_dataset(data)
    elif (data / "dataset_dict.json").is_file():
        splits = datasets.load_from_disk(str(data))
    else:
        splits = datasets.load_dataset("imagefolder", data_dir=str(data))
    if split not in splits:
        raise ValueError(f"{data} has no split {split!r} (has {sorted(splits)})")
    table = splits[split]
    if "category" not in table.column_names:
        raise ValueError(f"{data} ({split}): column 'category' is missing (has {table.column_names})")
    table = table.cast_column("image", datasets.Image(decode=False))
    root = image_root.resolve()
    records = []
    for row in table:
        path = Path(row["image"]["path"] or "")
        relative = path.relative_to(root) if path.is_absolute() and path.is_relative_to(root) else path
        records.append({"category": row["category"], "image": relative.as_posix(),
                        "attributes": row.get("attributes") or "{}"})
    return records


def mine_negatives(miner: str, records: list[dict], k: int, confusion_file: str | Path | None = None,
                   text_embedder: Callable | None = None) -> dict[str, list[str]]:
    """``k`` hard negatives per category of ``records`` by ``miner`` (one of :data:`MINERS`)."""
    names = sorted({record["category"] for record in records})
    if miner == "attributes":
        return miners.mine_by_attributes(category_attributes(records), k)
    if miner == "confusion":
        if not confusion_file:
            raise ValueError("--miner confusion needs --confusion FILE.json")
        confusion, confusion_names = read_confusion_file(Path(confusion_file))
        return miners.mine_by_confusion(confusion, confusion_names, k)
    if miner == "text-embeddings":
        if text_embedder is None:
            raise ValueError("--miner text-embeddings needs --model CHECKPOINT")
        return miners.mine_by_embeddings(names, text_embedder, k)
    raise ValueError(f"unknown miner {miner!r}; choose from {', '.join(MINERS)}")


def read_confusion_file(path: Path) -> tuple[list[list[float]], list[str]]:
    """A confusion matrix and its names from FOCI results (``predictions``) or ``{"names", "matrix"}``."""
    from .schema import read_json_file

    data = read_json_file(path, "--confusion file")
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected FOCI results ('predictions') or {{'names', 'matrix'}}")
    if "matrix" in data and "names" in data:
        return data["matrix"], data["names"]
    if "predictions" in data:
        predictions = data["predictions"]
        names = sorted({p["correct"] for p in predictions} | {o for p in predictions for o in p.get("options", [])})
        truths, predicted = [p["correct"] for p in predictions], [p["predicted"] for p in predictions]
        return miners.confusion_from_predictions(truths, predicted, names), names
    raise ValueError(f"{path}: expected FOCI results ('predictions') or {{'names', 'matrix'}}")


def write_option_sets(path: str | Path, records: list[dict], negatives: dict, num_options: int = 4,
                      seed: int = 0) -> dict[str, int]:
    """Build the option sets and write them as FOCI JSON; returns the question and category counts."""
    option_sets = miners.build_option_sets(records, negatives, num_options=num_options, seed=seed)
    Path(path).write_text(json.dumps(option_sets, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return {"questions": sum(map(len, option_sets.values())), "categories": len(option_sets)}
