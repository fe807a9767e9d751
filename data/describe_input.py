"""What ``finedefics data describe`` reads: the images to describe, their categories and splits.

Two kinds of INPUT:

- an image folder with one subfolder per category, the ``datasets`` imagefolder layout: either split folders
  (``train/``, ``validation/``, ``test/``) each holding category folders, or the category folders directly
  (one split, ``train``);
- a ``finedefics data`` folder (a ``save_to_disk`` dataset, or a synthetic benchmark): its rows with an image
  and a category are described, the others are kept as they are.

An input that cannot make a recognition dataset is refused with one clear line: no category folders, a
single category, an empty category folder.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from itertools import zip_longest
from pathlib import Path

SPLIT_NAMES = ("train", "validation", "test")


@dataclass(frozen=True)
class ImageItem:
    """One image to describe: where it is in the output (split and row) and how to read its bytes."""

    split: str
    row: int
    category: str
    name: str  # the file path, or "split row N" for an image stored inside a dataset
    path: str | None = None  # a file to read
    table: object = None  # or the dataset that stores the image's bytes (read when needed, not kept in memory)

    def read(self) -> bytes:
        if self.table is not None:
            image = self.table[self.row]["image"]
            if image.get("bytes") is not None:
                return image["bytes"]
        try:
            return Path(self.path).read_bytes()
        except OSError as error:
            raise ValueError(f"cannot read image file {self.name} ({error.strerror or error})") from None


@dataclass
class DescribeInput:
    """The splits to write (``datasets.Dataset`` each, images undecoded) and the images to describe in them."""

    source: Path
    splits: dict  # split name -> Dataset with at least "image" and "category"
    items: list[ImageItem]
    noun: object = None  # the ObjectNoun a data folder declares, if any
    ignored_files: int = 0  # files in category folders that are no images (a README, a .txt label file, ...)

    @property
    def categories(self) -> list[str]:
        return sorted({item.category for item in self.items})


def read_input(source: str | Path, max_images: int | None = None, splits: list[str] | None = None) -> DescribeInput:
    """The images of ``source`` (an image folder or a ``finedefics data`` folder), checked; with ``splits``, those
    splits only (the others are neither described nor written)."""
    source = Path(source)
    if not source.is_dir():
        raise FileNotFoundError(f"INPUT {source} is not a folder")
    if (source / "dataset_dict.json").is_file() or (source / "categories.json").is_file():
        described = _read_data_folder(source, max_images, splits)
    else:
        described = _read_image_folder(source, max_images, splits)
    _check_categories(described)
    return described


def _chosen(found: dict, splits: list[str] | None, source: Path) -> dict:
    """``found`` ({split: anything}) cut to ``splits``; a split asked for and not there is an error naming both."""
    if splits is None:
        return found
    missing = [split for split in splits if split not in found]
    if missing:
        raise ValueError(f"{source} has no {', '.join(missing)} split (it has {', '.join(found)})")
    return {split: found[split] for split in splits}


def _check_categories(described: DescribeInput) -> None:
    categories = described.categories
    if not categories:
        raise ValueError(f"{described.source} holds no image with a category to describe")
    if len(categories) == 1:
        raise ValueError(f"{described.source} has a single category ({categories[0]!r}); fine-grained recognition "
                         "and its hard negatives need at least two")


# ----------------------------------------------------------------------------- image folders
def image_extensions() -> set[str]:
    """The file extensions ``datasets``' imagefolder reads as images."""
    from datasets.packaged_modules.imagefolder.imagefolder import ImageFolder

    return {extension.lower() for extension in ImageFolder.EXTENSIONS}


def _visible_folders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def split_folders(source: Path) -> dict[str, Path]:
    """``{split: folder}``: the split folders of ``source``, or ``source`` itself as the one split ``train``."""
    folders = _visible_folders(source)
    splits = {p.name: p for p in folders if p.name in SPLIT_NAMES}
    if not splits:
        return {"train": source}
    others = [p.name for p in folders if p.name not in SPLIT_NAMES]
    if others:
        raise ValueError(f"{source} mixes split folders ({', '.join(splits)}) with other folders ({', '.join(others)}"
                         "); put every category folder inside a split folder, or use no split folders at all")
    return splits


def _category_images(split: str, folder: Path, extensions: set[str]) -> tuple[dict[str, list[Path]], int]:
    """``{category: image files}`` of one split folder, and the count of other files found."""
    categories = _visible_folders(folder)
    if not categories:
        raise ValueError(f"{folder} has no category subfolders: the images must be in one folder per category, "
                         f"e.g. {folder}/<category>/<image>.jpg")
    images, others = {}, 0
    for category in categories:
        files = sorted(p for p in category.rglob("*") if p.is_file() and not p.name.startswith("."))
        found = [p for p in files if p.suffix.lower() in extensions]
        others += len(files) - len(found)
        if not found:
            raise ValueError(f"category folder {category} holds no image files ({split} split); remove it or add "
                             "its images")
        images[category.name.strip()] = found
    return images, others


def spread_over_categories(images: dict[str, list], limit: int | None) -> list[tuple[str, object]]:
    """``(category, image)`` pairs, at most ``limit`` of them, taken in turn from each category so that a small
    limit still shows every category (None: all, category by category)."""
    if limit is None:
        return [(category, image) for category, found in images.items() for image in found]
    rounds = zip_longest(*([(category, image) for image in found] for category, found in images.items()))
    taken = [pair for round_ in rounds for pair in round_ if pair is not None][:limit]
    order = {category: index for index, category in enumerate(images)}
    return sorted(taken, key=lambda pair: order[pair[0]])  # rows grouped by category, as without a limit


def _read_image_folder(source: Path, max_images: int | None, chosen: list[str] | None = None) -> DescribeInput:
    import datasets

    extensions, splits, items, ignored = image_extensions(), {}, [], 0
    for split, folder in _chosen(split_folders(source), chosen, source).items():
        images, others = _category_images(split, folder, extensions)
        ignored += others
        pairs = spread_over_categories(images, max_images)
        splits[split] = datasets.Dataset.from_dict(
            {"image": [str(path) for _, path in pairs], "category": [category for category, _ in pairs]}
        ).cast_column("image", datasets.Image(decode=False))
        items += [ImageItem(split, row, category, str(path), path=str(path))
                  for row, (category, path) in enumerate(pairs)]
    return DescribeInput(source, splits, items, ignored_files=ignored)


# ----------------------------------------------------------------------------- finedefics data folders
def _read_data_folder(source: Path, max_images: int | None, chosen: list[str] | None = None) -> DescribeInput:
    import datasets

    from .schema import data_noun

    if (source / "categories.json").is_file():
        from .synth import load_synthetic_dataset

        loaded = load_synthetic_dataset(source)
    else:
        loaded = datasets.load_from_disk(str(source))
    if isinstance(loaded, datasets.Dataset):
        loaded = {"train": loaded}
    splits, items = {}, []
    for split, table in _chosen(dict(loaded), chosen, source).items():
        if "image" not in table.column_names or "category" not in table.column_names:
            raise ValueError(f"{source} ({split} split) has no 'image' and 'category' columns to describe (it has "
                             f"{table.column_names})")
        table = table.cast_column("image", datasets.Image(decode=False))
        table = _limited(table, max_images)
        splits[split] = table
        items += _stored_items(split, table)
    return DescribeInput(source, splits, items, noun=data_noun(source))


def _image_rows(table):
    """``(row, image path or None, category)`` of the rows with an image and a category (read row by row: a
    whole image column would hold every image's bytes in memory)."""
    for row, example in enumerate(table.select_columns(["image", "category"])):
        image, category = example["image"], example["category"]
        if image is not None and category:
            yield row, image.get("path"), category


def _limited(table, max_images: int | None):
    """At most ``max_images`` rows with an image and a category, spread over the categories (rows without one are
    kept: they are not described)."""
    if max_images is None:
        return table
    by_category = defaultdict(list)
    for row, _, category in _image_rows(table):
        by_category[category].append(row)
    described = {row for rows in by_category.values() for row in rows}
    chosen = {row for _, row in spread_over_categories(dict(by_category), max_images)}
    return table.select([row for row in range(len(table)) if row in chosen or row not in described])


def _stored_items(split: str, table) -> list[ImageItem]:
    return [ImageItem(split, row, category, path or f"{split} split row {row}", path=path, table=table)
            for row, path, category in _image_rows(table)]
