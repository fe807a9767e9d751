"""Data folders as users bring them, and the splits of the folders ``finedefics data`` writes.

- :func:`save_split`: write one split (train, validation, test) into a ``save_to_disk`` folder, keeping the
  folder's other splits, so that one file per split builds a dataset (``data csv --split``,
  ``data imagefolder``).
- :func:`read_imagefolder_split`: an imagefolder split (``metadata.jsonl`` with ``file_name`` and
  ``category``/``label``, or ``<class>/<image>`` folders) as training records, keeping its split.
- :func:`what_folder_is`: what a folder a user points at holds (a dataset, a synthetic benchmark, the
  reference release's CSVs, an imagefolder), and :func:`how_to_prepare` the commands that turn it into a
  dataset folder.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from .names import unify_category_names
from .schema import (
    DATA_INFO_FILE,
    OUTSIDE_ROOT_PROBLEM,
    ReadReport,
    RecordError,
    Records,
    check_image_file,
    escapes_image_root,
    read_jsonl,
    write_data_info,
)

SPLITS = ("train", "validation", "test")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
REFERENCE_FILES = ("pretrain.csv", "finetune.csv")


# ----------------------------------------------------------------------------- saving splits
def save_split(records: Records, output: str | Path, split: str, noun=None,
               merge_duplicate_names: bool = False) -> dict[str, int]:
    """Save ``records`` as ``split`` of the dataset folder ``output``; its other splits are kept.

    Returns the rows of every split now in the folder. The folder's noun (``finedefics_data.json``) must
    agree with ``noun`` where both are known; a folder that is something else than a dataset folder is refused.
    Category names that differ only in case, spacing or punctuation, among the records or against the folder's
    other splits, are refused, or merged with ``merge_duplicate_names`` (counted in the records' report).
    """
    import datasets

    output = Path(output)
    existing = _existing_splits(output)
    _check_same_noun(output, noun)
    known = sorted({name for table in existing.values() if "category" in table.column_names
                    for name in table["category"] if name})
    source = records.report.source if records.report is not None else str(output)
    for old, new in unify_category_names(records, known, merge_duplicate_names, source).items():
        if records.report is not None:
            records.report.note(f"category name merged: {old!r} -> {new!r}")
    splits = {name: table for name, table in existing.items() if name != split}
    splits[split] = records.to_dataset()
    staging = output.with_name(output.name + ".saving")
    if staging.exists():
        shutil.rmtree(staging)
    datasets.DatasetDict(splits).save_to_disk(str(staging))
    if noun is not None:
        write_data_info(staging, noun)
    elif (output / DATA_INFO_FILE).is_file():
        shutil.copy(output / DATA_INFO_FILE, staging / DATA_INFO_FILE)
    if output.exists():
        shutil.rmtree(output)  # the splits kept were copied into staging
    staging.rename(output)
    return {name: len(table) for name, table in splits.items()}


def _existing_splits(output: Path) -> dict:
    import datasets

    if not output.exists():
        return {}
    if not (output / "dataset_dict.json").is_file():
        if output.is_dir() and not any(output.iterdir()):
            return {}
        raise FileExistsError(f"{output} exists and is not a dataset folder written by `finedefics data` "
                              "(no dataset_dict.json): choose a new --output")
    return {name: table.flatten_indices() for name, table in datasets.load_from_disk(str(output)).items()}


def _check_same_noun(output: Path, noun) -> None:
    from .schema import data_noun

    if noun is None or not (output / DATA_INFO_FILE).is_file():
        return
    former = data_noun(output)
    if former is not None and former != noun:
        raise ValueError(f"{output} records the noun {former} but --noun gives {noun}: the splits of one dataset "
                         "must call their objects the same")


def categories_of(output: str | Path, split: str = "train") -> list[str]:
    """The category names of a split of a dataset folder ([] when the folder or the split is absent)."""
    import datasets

    output = Path(output)
    if not (output / "dataset_dict.json").is_file():
        return []
    splits = datasets.load_from_disk(str(output))
    if split not in splits or "category" not in splits[split].column_names:
        return []
    return sorted({name for name in splits[split]["category"] if name})


# ----------------------------------------------------------------------------- imagefolders
def imagefolder_splits(root: str | Path) -> dict[str, Path]:
    """``{split: folder}`` of an imagefolder's ``train/``, ``validation/`` and ``test/`` folders."""
    root = Path(root)
    return {split: root / split for split in SPLITS if (root / split).is_dir() and _holds_images(root / split)}


def read_imagefolder_split(folder: str | Path, check_images: bool = True) -> Records:
    """One imagefolder split as records: image, category, and ``attribute`` / ``neg_categories`` where the
    metadata give them. A row without an image or a category is an error naming the file, line and field."""
    folder = Path(folder)
    metadata = folder / "metadata.jsonl"
    rows = read_jsonl(metadata) if metadata.is_file() else _class_folder_rows(folder)
    source = metadata if metadata.is_file() else folder
    report, records = ReadReport(str(source)), Records()
    for number, row in enumerate(rows, start=1):
        report.rows_read += 1
        records.append(_imagefolder_record(row, folder, source, f"line {number}", check_images))
    report.rows_kept = len(records)
    if not any(record["attribute"] for record in records):
        report.note("rows without a description (attribute = ''; the metadata have no 'attribute' field)",
                    len(records))
    records.report = report
    return records


def _class_folder_rows(folder: Path) -> list[dict]:
    rows = [{"file_name": image.relative_to(folder).as_posix(), "category": class_dir.name}
            for class_dir in sorted(p for p in folder.iterdir() if p.is_dir())
            for image in sorted(class_dir.iterdir()) if image.suffix.lower() in IMAGE_SUFFIXES]
    if not rows:
        raise ValueError(f"{folder} holds neither metadata.jsonl nor images in class folders (<class>/<image>)")
    return rows


def _imagefolder_record(row: dict, folder: Path, source: Path, where: str, check_images: bool) -> dict:
    category = row.get("category", row.get("label"))
    if not isinstance(category, str) or not category.strip():
        raise RecordError(source, where, "category", f"must be a category name (or give it as 'label'), got "
                          f"{category!r}")
    file_name = row.get("file_name")
    if not isinstance(file_name, str) or not file_name:
        raise RecordError(source, where, "file_name", f"must name the image file, got {file_name!r}")
    if escapes_image_root(file_name):
        raise RecordError(source, where, "file_name", f"{file_name!r} {OUTSIDE_ROOT_PROBLEM}")
    image = folder / file_name
    if check_images:
        check_image_file(image, source, where, "file_name")
    negatives = row.get("neg_categories") or []
    return {"image": str(image.resolve()), "category": category.strip(), "attribute": row.get("attribute") or "",
            "attributes": "{}", "neg_categories": list(negatives), "neg_attributes": list(row.get("neg_attributes")
                                                                                          or []),
            "genus": "", "is_rare": bool(row.get("is_rare", False))}


def _holds_images(folder: Path) -> bool:
    if (folder / "metadata.jsonl").is_file():
        return True
    return any(path.suffix.lower() in IMAGE_SUFFIXES for path in folder.rglob("*"))


# ----------------------------------------------------------------------------- what a folder is
def what_folder_is(folder: str | Path) -> str:
    """``dataset`` (save_to_disk), ``synthetic``, ``reference`` (pretrain.csv / finetune.csv), ``imagefolder``
    (train/ and test/ image folders, or one split), or ``unknown``."""
    folder = Path(folder)
    if (folder / "dataset_dict.json").is_file():
        return "dataset"
    if (folder / "categories.json").is_file() and (folder / "config.json").is_file():
        return "synthetic"
    if any((folder / name).is_file() for name in REFERENCE_FILES):
        return "reference"
    if imagefolder_splits(folder) or (folder / "metadata.jsonl").is_file():
        return "imagefolder"
    return "unknown"


def how_to_prepare(folder: str | Path, noun: str = "NOUN") -> str:
    """The commands that turn ``folder`` into a dataset folder ``finedefics demo --data`` and training read."""
    folder = Path(folder)
    kind = what_folder_is(folder)
    out = f"{folder.name or 'data'}-dataset"
    if kind == "reference":
        images = _reference_image_root(folder)
        lines = [f"finedefics data csv {folder / 'pretrain.csv'} --image-root {images} --noun {noun} --output {out}"]
        if (folder / "finetune.csv").is_file():
            lines.append(f"finedefics data csv {folder / 'finetune.csv'} --image-root {images} --noun {noun} "
                         f"--categories {folder / 'pretrain.csv'} --output {out}-stage2")
        test = folder / "test"
        if test.is_dir() and _holds_images(test):
            lines.append(f"finedefics data imagefolder {test} --split test --noun {noun} --output {out}")
        return "\n".join("    " + line for line in lines)
    if kind == "imagefolder":
        return (f"    finedefics data imagefolder {folder} --noun {noun} --output {out}\n"
                "(its metadata.jsonl needs an 'attribute' description per image for stage I's contrastive terms)")
    return ""


def _reference_image_root(folder: Path) -> Path:
    for name in ("images", "train", "image"):
        if (folder / name).is_dir():
            return folder / name
    return folder


__all__ = ["SPLITS", "categories_of", "how_to_prepare", "imagefolder_splits", "read_imagefolder_split", "save_split",
           "what_folder_is"]
