"""The Finedefics training record, its validation, and the bookkeeping every reader shares.

One record is one training image:

==================  =====================================================================
``image``           the image (PIL image, a file path, or a ``datasets`` image dict)
``category``        category name, e.g. ``"Velmoran Thistlewing"``
``label``           class id: index into the sorted list of category names
``attribute``       one-sentence attribute description of THIS image (``""``: none available)
``attributes``      JSON of the structured visible attribute values ``{name: value}``
``neg_categories``  hard-negative category names, most similar first
``neg_attributes``  attribute descriptions of those negatives, same order
``genus``           the category's group (``""`` when unknown)
``is_rare``         whether the category has few training images
==================  =====================================================================

Rows may also hold an explicit instruction, ``question`` and ``answer`` (see ``kinds.py`` for how
each kind of row is trained); rows that are pure instructions have no ``category``.

Readers never drop a row silently: a bad row either raises :class:`RecordError` (a ``ValueError``
naming the file, row and field) or, when the caller asks to skip bad rows, is counted in the
reader's :class:`ReadReport` under its reason, with its row number.

A saved data folder may declare its objects' noun ("car") in ``finedefics_data.json``
(:func:`write_data_info`); training and evaluation read it with :func:`data_noun`.
"""

from __future__ import annotations

import json
import logging
import os
import struct
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path, PurePath

from .trust import resolved_inside

logger = logging.getLogger(__name__)

# Image paths in option files, reference CSVs and metadata are read relative to an image root.
OUTSIDE_ROOT_PROBLEM = ("points outside the image root (an absolute path, '..' climbing out of it, or a symbolic "
                        "link leading out of it); pass --allow-images-outside-root (allow_images_outside_root=True) "
                        "if the file is trusted")


def escapes_image_root(relative: str, root: str | Path | None = None) -> bool:
    """Whether an image path given relative to an image root leaves it: an absolute path, one whose ``..`` climb
    out, or, given the ``root``, one that resolves (symbolic links followed) outside it. A link inside the root
    that points to another place inside it stays allowed; one pointing outside would copy a file from elsewhere
    on this machine into the dataset."""
    if os.path.isabs(relative) or PurePath(relative).drive:
        return True
    if PurePath(os.path.normpath(relative)).parts[:1] == ("..",):
        return True
    return root is not None and not resolved_inside(root, relative)


COLUMNS = ("image", "category", "label", "attribute", "attributes", "neg_categories", "neg_attributes", "genus",
           "is_rare")

# The reference training CSVs put several negatives in one cell, separated by a tab and a newline.
NEGATIVE_SEPARATOR = "\t\n"

ERROR_MODES = ("raise", "skip")

# Written beside a saved dataset: what the data say about themselves (their objects' noun).
DATA_INFO_FILE = "finedefics_data.json"


class RecordError(ValueError):
    """A bad training record; the message names the source file, the row and the field."""

    def __init__(self, source: str, row: int | str | None, field_name: str | None, problem: str):
        self.source, self.row, self.field, self.problem = str(source), row, field_name, problem
        super().__init__(f"{where(source, row, field_name)}: {problem}")


def where(source, row=None, field_name: str | None = None) -> str:
    """``"file.csv, row 3, field 'category'"``: the location prefix of every data error."""
    parts = [str(source)]
    if row is not None:
        parts.append(f"row {row}")
    if field_name:
        parts.append(f"field {field_name!r}")
    return ", ".join(parts)


# ----------------------------------------------------------------------------- validation
def validate_record(record: dict, source: str = "<records>", row: int | str | None = None,
                    require_category: bool = True) -> dict:
    """Check one training record against the schema and return it unchanged.

    Args:
        record: the record (a dict with the columns above; extra keys are allowed).
        source: where the record comes from (a file name), used in error messages.
        row: the record's row or line number in ``source``.
        require_category: an instruction row (``question`` + ``answer``, with or without an image)
            may lack a category only when this is False.

    Raises:
        RecordError: naming ``source``, ``row`` and the offending field.
    """

    def fail(field_name: str, problem: str):
        raise RecordError(source, row, field_name, problem)

    _check_category(record, fail, require_category)
    _check_image(record, fail)
    _check_description(record.get("attribute", ""), "attribute", fail)
    _check_negatives(record, fail)
    _check_attributes_json(record.get("attributes"), fail)
    label = record.get("label")
    if label is not None and (isinstance(label, bool) or not isinstance(label, int) or label < 0):
        fail("label", f"must be a non-negative integer class id, got {label!r}")
    if "is_rare" in record and not isinstance(record["is_rare"], bool):
        fail("is_rare", f"must be true or false, got {record['is_rare']!r}")
    if "genus" in record and not isinstance(record["genus"], str):
        fail("genus", f"must be a string, got {type(record['genus']).__name__}")
    return record


def _check_category(record: dict, fail, require_category: bool) -> None:
    category = record.get("category")
    if isinstance(category, str) and category.strip():
        if category != category.strip():
            fail("category", f"has leading or trailing whitespace: {category!r}")
        return
    text_only = record.get("question") and record.get("answer")
    if category in (None, "") and text_only and not require_category:
        return
    if category in (None, "") and text_only:
        fail("category", "is empty and the answer is not a recognition answer naming a known category; every "
                         "row needs its category name here (instruction rows are kept where require_category=False, "
                         "as `finedefics data csv` does)")
    fail("category", "is empty; every training row needs its category name")


def _check_image(record: dict, fail) -> None:
    if record.get("image") is not None or record.get("images"):
        return
    if record.get("question") and record.get("answer"):
        return  # a text-only instruction row
    fail("image", "is missing")


def _check_description(text, field_name: str, fail, allow_empty: bool = True) -> None:
    if not isinstance(text, str):
        fail(field_name, f"must be a string, got {type(text).__name__}")
    if text == "" and allow_empty:
        return  # "" means: no description available
    if not text.strip():
        fail(field_name, "is an empty description (whitespace only)")


def _check_negatives(record: dict, fail) -> None:
    names = record.get("neg_categories") or []
    descriptions = record.get("neg_attributes") or []
    for field_name, values in (("neg_categories", names), ("neg_attributes", descriptions)):
        if not isinstance(values, (list, tuple)):
            fail(field_name, f"must be a list, got {type(values).__name__}")
    for index, name in enumerate(names):
        if not isinstance(name, str) or not name.strip():
            fail("neg_categories", f"negative {index + 1} is empty")
        if name == record.get("category"):
            fail("neg_categories", f"negative {index + 1} is the positive category {name!r} itself")
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        fail("neg_categories", f"lists {duplicates[0]!r} more than once")
    for index, text in enumerate(descriptions):
        _check_description(text, "neg_attributes", lambda f, p: fail(f, f"negative {index + 1} {p}"),
                           allow_empty=False)
    if names and descriptions and len(names) != len(descriptions):
        fail("neg_attributes", f"has {len(descriptions)} descriptions for {len(names)} negative categories")


def _check_attributes_json(value, fail) -> None:
    if value in (None, ""):
        return
    if not isinstance(value, str):
        fail("attributes", f"must be a JSON string, got {type(value).__name__}")
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError as error:
        fail("attributes", f"is not valid JSON ({error})")
    if not isinstance(parsed, dict):
        fail("attributes", "must be a JSON object {attribute name: value}")


# ----------------------------------------------------------------------------- reports
@dataclass
class ReadReport:
    """What a reader read, kept and skipped (with reasons and row numbers): nothing goes unaccounted."""

    source: str
    rows_read: int = 0
    rows_kept: int = 0
    skipped: dict[str, list] = field(default_factory=lambda: defaultdict(list))
    notes: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    kinds: dict[str, int] = field(default_factory=lambda: defaultdict(int))  # kept rows by kind (``kinds.py``)

    def skip(self, row, reason: str) -> None:
        """Count a skipped row under ``reason``."""
        self.skipped[reason].append(row)

    def note(self, what: str, count: int = 1) -> None:
        """Count something worth reporting that did not cost a row (e.g. a fallback used)."""
        self.notes[what] += count

    @property
    def rows_skipped(self) -> int:
        return sum(len(rows) for rows in self.skipped.values())

    def summary(self) -> str:
        """One human-readable paragraph: counts, then each skip reason with its first row numbers."""
        lines = [f"{self.source}: read {self.rows_read} rows, kept {self.rows_kept}, skipped {self.rows_skipped}"]
        if self.kinds:
            lines.append("  kept rows by kind: " + ", ".join(f"{count} {kind}" for kind, count in self.kinds.items()))
        for reason, rows in sorted(self.skipped.items()):
            shown = ", ".join(str(r) for r in rows[:10]) + (" ..." if len(rows) > 10 else "")
            lines.append(f"  skipped {len(rows)} ({reason}): rows {shown}")
        for what, count in sorted(self.notes.items()):
            lines.append(f"  {what}: {count}")
        return "\n".join(lines)

    def log(self) -> None:
        """Warn when rows were skipped (the summary lists them); the whole summary goes to debug logging.

        Commands print :meth:`summary` themselves; logging it as well printed it twice.
        """
        if self.rows_skipped:
            logger.warning("%s: skipped %d of %d rows (%s); the reader's report lists them", self.source,
                           self.rows_skipped, self.rows_read, "; ".join(sorted(self.skipped)))
        logger.debug("%s", self.summary())

    def as_dict(self) -> dict:
        return {"source": self.source, "rows_read": self.rows_read, "rows_kept": self.rows_kept,
                "skipped": {k: list(v) for k, v in self.skipped.items()}, "notes": dict(self.notes),
                "kinds": dict(self.kinds)}


class Records(list):
    """A list of records that also carries the :class:`ReadReport` of the reader that made it."""

    def __init__(self, records=(), report: ReadReport | None = None):
        super().__init__(records)
        self.report = report

    def to_dataset(self, decode_images: bool = True):
        """A ``datasets.Dataset``; ``image`` file paths become an ``Image`` feature."""
        import datasets

        dataset = datasets.Dataset.from_list(list(self))
        if "image" in dataset.column_names and dataset.features["image"].dtype == "string":
            dataset = dataset.cast_column("image", datasets.Image(decode=decode_images))
        return dataset


def check_error_mode(errors: str) -> None:
    if errors not in ERROR_MODES:
        raise ValueError(f"errors must be one of {ERROR_MODES}, got {errors!r}")


def handle_bad_row(error: RecordError, report: ReadReport, errors: str, reason: str | None = None) -> None:
    """Raise ``error`` (errors="raise") or count the row as skipped under a short reason."""
    if errors == "raise":
        raise error
    report.skip(error.row, reason or f"{error.field}: {error.problem}")


# ----------------------------------------------------------------------------- data folders
def write_data_info(folder: str | Path, noun) -> Path:
    """Record in a saved data folder what its objects are called (an ``ObjectNoun``)."""
    path = Path(folder) / DATA_INFO_FILE
    path.write_text(json.dumps(noun.config_fields(), indent=1) + "\n", encoding="utf-8")
    return path


# What the synthetic benchmark (``synth/``, which draws birds) calls its objects. Written here, below the generator,
# so that ``data_noun`` can name a benchmark folder's noun without importing the generator that imports this module.
SYNTHETIC_BENCHMARK_NOUN = "bird"


def data_noun(folder: str | Path):
    """The ``ObjectNoun`` a data folder declares, or None: its ``finedefics_data.json``, or "bird" for the
    synthetic benchmark (a folder with ``categories.json``)."""
    from .prompts import ObjectNoun

    folder = Path(folder)
    info = folder / DATA_INFO_FILE
    if info.is_file():
        try:
            return ObjectNoun.from_config(json.loads(info.read_text(encoding="utf-8")))
        except (json.JSONDecodeError, ValueError) as error:
            raise ValueError(f"{info}: {error}") from error
    if (folder / "categories.json").is_file():
        return ObjectNoun.of(SYNTHETIC_BENCHMARK_NOUN)
    return None


# ----------------------------------------------------------------------------- files
def read_text(path: str | Path) -> str:
    """A text file decoded as UTF-8 (a BOM is dropped); other encodings fail naming the line."""
    path = Path(path)
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise RecordError(path, None, None, f"line {line} is not UTF-8 text (byte 0x{data[error.start]:02x} at offset "
                          f"{error.start}); re-save the file as UTF-8") from None


def read_json_file(path: str | Path, what: str, hint: str = ""):
    """The JSON value a file holds; a missing file is ``FileNotFoundError("<what> not found: <path><hint>")``,
    text that is not UTF-8 JSON a ``ValueError`` naming the file. The one reader of the JSON files users give."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}{hint}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from None


def read_jsonl(path: str | Path, what: str = "metadata file", check_row=None) -> list[dict]:
    """The rows of a JSON-lines file (blank lines skipped); a bad line is an error naming file and line.

    ``check_row(row, where)``, if given, validates each row (``where`` is "line N"). An empty file is an
    error too: every caller would otherwise build an empty split.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    rows = []
    for number, line in enumerate(read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise RecordError(path, f"line {number}", None, f"is not valid JSON ({error})") from None
        if check_row is not None:
            check_row(row, f"line {number}")
        rows.append(row)
    if not rows:
        raise ValueError(f"{path} holds no rows: the split would be empty")
    return rows


def check_image_file(path: str | Path, source, row, field_name: str = "image") -> Path:
    """Open and verify an image file; a missing, unreadable, too small or too large one raises naming source, row
    and field (the same images the processor refuses: see ``check_image_bytes``)."""
    path = Path(path)
    if not path.is_file():
        raise RecordError(source, row, field_name, f"image file not found: {path}")
    with open(path, "rb") as handle:
        check_image_bytes(handle, str(path), source, row, field_name)
    return path


def check_image_bytes(file, name: str, source, row, field_name: str = "image") -> None:
    """Decode an image (a binary file object) cheaply and check it as ``FinedeficsProcessor.load_image`` would."""
    from PIL import Image, UnidentifiedImageError

    from modeling_finedefics.processing_finedefics import MIN_IMAGE_SIDE, check_image_size

    try:
        with Image.open(file) as image:
            size = image.size  # before draft(), which shrinks it
            if min(size) >= MIN_IMAGE_SIDE:
                # Decode for real (a truncated file passes a header check); JPEGs decode at 1/8 scale, cheaply.
                image.draft("RGB", (max(1, image.width // 8), max(1, image.height // 8)))
                image.load()
    except Image.DecompressionBombError as error:
        raise RecordError(source, row, field_name,
                          f"image {name} has too many pixels to decode safely ({error})") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, struct.error) as error:
        raise RecordError(source, row, field_name, f"cannot read image file {name} ({error})") from None
    try:
        check_image_size(size, name)
    except ValueError as error:
        raise RecordError(source, row, field_name, str(error)) from None
