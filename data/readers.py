"""Readers that turn real fine-grained datasets into Finedefics training records (``schema.py``).

- :func:`read_reference_csv`: the reference implementation's training CSVs.
- :func:`from_classification_dataset`: any ``datasets`` image-classification dataset (imagefolder,
  or a Hub dataset with an image and a label column), with descriptions and negatives attached.
- :func:`read_cub_attributes`: CUB-200-2011's per-image attribute annotations, turned into
  one-sentence descriptions with no language model; :func:`build_cub_records` adds images,
  categories, splits and hard negatives mined from the same annotations.

Every reader either raises a :class:`~.schema.RecordError` naming the file, row and field, or (with
``errors="skip"``) skips the bad row and counts it, with its row number, in the returned report.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

from tqdm.auto import tqdm

from .choices import NO_OPTIONS_FOUND, looks_like_a_choice, picked_option, read_options
from .kinds import DESCRIPTION, MULTIPLE_CHOICE, RECOGNITION_KINDS, known_category_index, read_recognition, row_kind
from .names import normalize_name
from .negatives import mine_by_attributes, negative_descriptions
from .schema import (
    OUTSIDE_ROOT_PROBLEM,
    ReadReport,
    RecordError,
    Records,
    check_error_mode,
    check_image_bytes,
    check_image_file,
    escapes_image_root,
    handle_bad_row,
    read_text,
    validate_record,
)

logger = logging.getLogger(__name__)

# ============================================================================= reference CSV
REFERENCE_REQUIRED_COLUMNS = ("question", "answer", "type", "attribute", "neg_attribute", "category", "neg_category")
MULTI_IMAGE_TYPE = "multi-image"
_SEPARATOR = re.compile(r"\t\r?\n")  # the reference's "\t\n", also when the file was saved with CRLF


def read_reference_csv(path: str | Path, image_root: str | Path, errors: str = "raise", multi_image: str = "skip",
                       check_images: bool = True, require_category: bool = True,
                       known_categories: Iterable[str] = (), allow_images_outside_root: bool = False,
                       allow_new_categories: bool = False) -> Records:
    """Read a reference-implementation training CSV (stage I's pretrain.csv or stage II's finetune.csv).

    Columns: ``question``, ``answer``, ``type``, ``image_path`` (or ``image_path_1`` / ``image_path_2``
    for ``type == "multi-image"`` rows), ``attribute``, ``neg_attribute``, ``category``,
    ``neg_category``. Empty cells mean absent. Several negatives in one cell are separated by a tab
    followed by a newline. Image paths are relative to ``image_root``.

    Stage II rows are question/answer pairs without a category cell. A row without a category that is
    a recognition question (a multiple choice in any layout of ``choices.py`` whose answer picks an option,
    or an answer naming a known category, or a ``type`` that says so: see :func:`~.kinds.read_recognition`)
    gets the category its answer picks; other such rows are instruction rows and keep no category. A
    category so derived that is no known one is refused (all such names are listed) unless
    ``allow_new_categories``. The report counts the kept rows by kind (``kinds.py``), the multiple-choice
    questions read as recognition and those that were not (by reason), and the description rows whose
    answer words the description otherwise than their ``attribute`` cell.

    Args:
        path: the CSV file (UTF-8).
        image_root: folder the image paths are relative to.
        errors: ``"raise"`` on the first bad row, or ``"skip"`` bad rows (counted in ``.report``).
        multi_image: ``"skip"`` two-image rows (counted: the trainer's collator takes one image per
            row), or ``"keep"`` them with ``image=None`` and both paths in ``images``.
        check_images: open every image once, so a missing or corrupt file is reported here with its
            row rather than mid-training.
        require_category: every row needs a category, given or derived from its recognition answer
            (the contrastive terms of stage I need one); False keeps instruction rows without one.
        known_categories: category names besides the file's own ``category`` cells (e.g. those of
            pretrain.csv) that an answer may name.
        allow_images_outside_root: read image paths that leave ``image_root`` (absolute, or climbing
            out with ``..``); such a row is a bad row otherwise.
        allow_new_categories: create the categories recognition answers name that are not known (counted
            in the report) instead of refusing the file.

    Returns:
        :class:`~.schema.Records` (a list of records) whose ``.report`` counts what was read,
        kept and skipped. Records carry ``image`` (an absolute path), ``category`` (None for an
        instruction row), ``label``, ``attribute``, ``attributes`` (``"{}"``: not in this format),
        ``neg_categories``, ``neg_attributes``, ``genus`` (``""``), ``is_rare`` (False: unknown),
        ``question``, ``answer``, ``type`` and ``source_row``.
    """
    check_error_mode(errors)
    if multi_image not in ("skip", "keep"):
        raise ValueError(f"multi_image must be 'skip' or 'keep', got {multi_image!r}")
    path, image_root = Path(path), Path(image_root)
    if not image_root.is_dir():
        raise FileNotFoundError(f"image root {image_root} (for {path}) is not a folder")
    rows = _numbered_csv_rows(path)
    known = known_category_index([*known_categories, *((row.get("category") or "").strip() for _, _, row in rows)])
    report, records, unknown = ReadReport(str(path)), [], UnknownCategories()
    for number, where_row, row in tqdm(rows, desc=f"reading {path.name}", unit="row", disable=None):
        report.rows_read += 1
        if row.get("type", "").strip() == MULTI_IMAGE_TYPE and multi_image == "skip":
            report.skip(number, "two-image row (multi_image='skip')")
            continue
        try:
            record = _reference_record(row, where_row, path, image_root, check_images, report,
                                       allow_images_outside_root)
            _check_negative_separators(record, known, path, where_row, report)
            if record["category"]:
                _check_given_choice(record, path, where_row, report)
            else:
                _derive_category(record, known, path, where_row, report, unknown, allow_new_categories)
            validate_record(record, str(path), where_row, require_category=require_category)
        except RecordError as error:
            handle_bad_row(error, report, errors)
            continue
        records.append({**record, "source_row": number})
        _count_kind(record, report)
    unknown.check(path, report, allow_new_categories)
    _assign_labels(records)
    report.rows_kept = len(records)
    report.log()
    return Records(records, report)


def _numbered_csv_rows(path: Path) -> list[tuple[int, str, dict]]:
    """``(row number, "N (line L)", row)`` for every data row; a row can span lines (negatives are
    newline-separated), so each is named by the line it starts on."""
    reader = csv.DictReader(io.StringIO(read_text(path), newline=""))
    _check_reference_columns(path, reader.fieldnames or [])
    rows, last_line = [], reader.line_num  # the header's last line
    rows_read = iter(reader)
    while True:
        number, where_row = len(rows) + 1, f"{len(rows) + 1} (line {last_line + 1})"
        try:
            row = next(rows_read)
        except StopIteration:
            return rows
        except csv.Error as error:
            raise RecordError(path, where_row, None, _csv_problem(error)) from None
        rows.append((number, where_row, row))
        last_line = reader.line_num


def _csv_problem(error: csv.Error) -> str:
    if "field larger than field limit" in str(error):
        return (f"a cell is longer than {csv.field_size_limit()} characters, the most a CSV cell may hold here; "
                "an unclosed quote (\") makes the rest of the file one cell")
    return f"is not valid CSV ({error})"


MC_READ = "multiple-choice rows read as recognition (category: the option the answer picks)"
MC_NOT_READ = "multiple-choice rows not read as recognition ({})"
DESCRIPTION_REWORDED = ("description rows whose answer words the description otherwise than their attribute cell "
                        "(kept as description rows: the contrastive terms use the attribute cell)")
NEW_CATEGORIES = "categories created from answers (not in the category column or --categories; --allow-new-categories)"


class UnknownCategories:
    """Categories that recognition answers name but no known list holds, with the first row naming each."""

    SHOWN = 5

    def __init__(self):
        self.first_row: dict[str, str] = {}
        self.rows = 0

    def add(self, name: str, where_row: str) -> None:
        self.first_row.setdefault(name, where_row)
        self.rows += 1

    def check(self, path: Path, report: ReadReport, allow: bool) -> None:
        """Refuse the file when answers named unknown categories (unless ``allow``: then count them)."""
        if not self.first_row:
            return
        if allow:
            report.note(NEW_CATEGORIES, len(self.first_row))
            return
        names = list(self.first_row)
        shown = ", ".join(repr(name) for name in names[:self.SHOWN])
        more = f" and {len(names) - self.SHOWN} more" if len(names) > self.SHOWN else ""
        raise RecordError(path, self.first_row[names[0]], "answer",
                          f"recognition answers name {len(names)} categories that are not known ({shown}{more}; "
                          f"{self.rows} rows): known categories are the file's category cells and those of "
                          "--categories (give stage I's file: --categories pretrain.csv); pass "
                          "--allow-new-categories to create them")


def _derive_category(record: dict, known: dict[str, str], path: Path, where_row: str, report: ReadReport,
                     unknown: UnknownCategories, allow_new_categories: bool) -> None:
    """Give a category-less recognition question the category its answer picks (see ``kinds.py``)."""
    if not (record["question"] and record["answer"]):
        return
    try:
        read = read_recognition(record["question"], record["answer"], record["type"], known, allow_new_categories)
    except ValueError as error:
        raise RecordError(path, where_row, "answer", str(error)) from None
    if read.unread_choice:
        report.note(MC_NOT_READ.format(read.unread_choice))
    if read.kind not in RECOGNITION_KINDS:
        record["category"] = None  # an instruction row: no category
        return
    if record["image"] is None:
        raise RecordError(path, where_row, "image_path", f"is empty, but the row is a recognition question "
                          f"(answer {record['answer']!r}): it needs its image")
    if not read.known:
        unknown.add(read.category, where_row)
    record["category"] = read.category
    report.note("categories derived from recognition answers")


def _check_given_choice(record: dict, path: Path, where_row: str, report: ReadReport) -> None:
    """A row with a category and a multiple choice must pick that category: refuse one that picks another,
    count one whose answer picks nothing."""
    if not record["question"] or record["image"] is None:
        return
    options = read_options(record["question"])
    if not options:
        if looks_like_a_choice(record["answer"] or ""):
            report.note(MC_NOT_READ.format(NO_OPTIONS_FOUND))
        return
    letter, problem = picked_option(record["answer"] or "", options)
    if letter is None:
        report.note(MC_NOT_READ.format(problem))
    elif normalize_name(options[letter]) != normalize_name(record["category"]):
        raise RecordError(path, where_row, "answer",
                          f"{record['answer']!r} picks option {letter} {options[letter]!r}, but the row's category "
                          f"is {record['category']!r}")


def _count_kind(record: dict, report: ReadReport) -> None:
    kind = row_kind(record)
    report.kinds[kind or "untrainable"] += 1
    if kind == MULTIPLE_CHOICE:
        report.note(MC_READ)
    if kind == DESCRIPTION and record["answer"] != record["attribute"]:
        report.note(DESCRIPTION_REWORDED)


def _check_reference_columns(path: Path, header: list[str]) -> None:
    repeated = [c for c in dict.fromkeys(header) if header.count(c) > 1]
    if repeated:
        # csv.DictReader would keep only the last column of a name, silently dropping the others' cells.
        raise RecordError(path, None, repeated[0],
                          f"column appears more than once in the header ({header.count(repeated[0])} "
                          "times); rename or remove the copies")
    missing = [c for c in REFERENCE_REQUIRED_COLUMNS if c not in header]
    if "image_path" not in header and not {"image_path_1", "image_path_2"} <= set(header):
        missing.append("image_path")
    if missing:
        raise RecordError(path, None, missing[0], f"column is missing (the file has columns {header})")


def _reference_record(row: dict, where_row: str, path: Path, image_root: Path, check_images: bool, report: ReadReport,
                      allow_images_outside_root: bool = False) -> dict:
    if None in row:
        raise RecordError(path, where_row, None, f"has more cells than the header ({len(row) - 1 + len(row[None])})")
    short = [k for k, v in row.items() if v is None]
    if short:
        raise RecordError(path, where_row, short[0], "is missing: the row has fewer cells than the header")
    # Surrounding whitespace is dropped, but a cell of only whitespace stays as it is, so validation
    # reports it as an empty description or name instead of it passing as "absent".
    # Negative cells keep their separators until they are split.
    cell = {k: v if k in ("neg_category", "neg_attribute") else (v.strip() or v) for k, v in row.items()}
    images = _reference_images(cell, where_row, path, image_root, check_images, allow_images_outside_root)
    neg_categories = _split_negatives(cell["neg_category"], report)
    neg_attributes = _split_negatives(cell["neg_attribute"], report)
    return {
        "image": str(images[0]) if len(images) == 1 else None, "images": [str(p) for p in images],
        "category": cell["category"], "attribute": cell["attribute"],
        "attributes": "{}", "neg_categories": neg_categories, "neg_attributes": neg_attributes,
        "genus": "", "is_rare": False, "question": cell["question"], "answer": cell["answer"], "type": cell["type"],
    }


def _reference_images(cell: dict, where_row: str, path: Path, image_root: Path, check_images: bool,
                      allow_images_outside_root: bool = False) -> list[Path]:
    fields = ("image_path_1", "image_path_2") if cell["type"] == MULTI_IMAGE_TYPE else ("image_path",)
    images = []
    for field_name in fields:
        relative = (cell.get(field_name) or "").strip()
        if not relative:
            if cell.get("question") and cell.get("answer") and field_name == "image_path":
                continue  # a text-only instruction row
            raise RecordError(path, where_row, field_name, "is empty; the row needs an image")
        if not allow_images_outside_root and escapes_image_root(relative, image_root):
            raise RecordError(path, where_row, field_name, f"{relative!r} {OUTSIDE_ROOT_PROBLEM}")
        image = image_root / relative
        images.append(check_image_file(image, path, where_row, field_name) if check_images else image)
    return images


def _split_negatives(cell: str, report: ReadReport) -> list[str]:
    if not cell.strip():
        return [cell] if cell else []  # whitespace only: kept, so validation reports an empty negative
    parts = _SEPARATOR.split(cell)
    if len(parts) > 1 and not parts[-1].strip():
        parts = parts[:-1]  # "a\t\nb\t\n": a trailing separator is not an extra (empty) negative
        report.note("cells ending with a negative separator (trailing separator ignored)")
    return [p.strip() if p.strip() else p for p in parts]


_LINE_BREAK_OR_TAB = re.compile(r"[\t\r\n]")
_LIST_PUNCTUATION = re.compile(r"\s*[,;]\s*")
NEGATIVES_WITH_LIST_PUNCTUATION = ("negatives holding ',' or ';' that are not known category names (each kept as one "
                                   "name; several negatives in a cell are separated by a tab and a newline)")


def _check_negative_separators(record: dict, known: dict[str, str], path: Path, where_row: str,
                               report: ReadReport) -> None:
    """Refuse negatives joined by another separator than the reference's tab + newline: they would be read as
    ONE merged negative. A tab or a line break left inside a negative is never part of a name or a
    description; ", " or ";" is refused where the merged name is no known category and its pieces all are (a
    known name may hold a comma), and counted in the report where that cannot be told."""
    for key, field_name in (("neg_categories", "neg_category"), ("neg_attributes", "neg_attribute")):
        for index, negative in enumerate(record[key], start=1):
            if _LINE_BREAK_OR_TAB.search(negative.strip()):
                raise RecordError(path, where_row, field_name,
                                  f"negative {index} {negative!r} holds a tab or a line break "
                                  "on its own; several negatives in one cell are separated by a tab and a newline")
    for index, name in enumerate(record["neg_categories"], start=1):
        if normalize_name(name) in known or not _LIST_PUNCTUATION.search(name):
            continue
        pieces = [piece for piece in _LIST_PUNCTUATION.split(name.strip()) if piece]
        if len(pieces) > 1 and all(normalize_name(piece) in known for piece in pieces):
            raise RecordError(path, where_row, "neg_category",
                              f"negative {index} {name!r} is no known category but lists "
                              f"the known categories {pieces}; several negatives in one cell are separated by a tab "
                              "and a newline, not by ',' or ';'")
        report.note(NEGATIVES_WITH_LIST_PUNCTUATION)


def _assign_labels(records: list[dict]) -> None:
    """``label`` = index of the category in the sorted list of the records' category names."""
    names = sorted({r["category"] for r in records if r.get("category")})
    index = {name: i for i, name in enumerate(names)}
    for record in records:
        record["label"] = index.get(record.get("category"), -1) if record.get("category") else None


# ============================================================================= datasets
def from_classification_dataset(ds, image_column: str = "image", label_column: str = "label", descriptions=None,
                                negatives: Mapping[str, Sequence[str]] | None = None,
                                category_descriptions: Mapping[str, str] | None = None,
                                category_names: Callable[[str], str] | Sequence[str] | None = None,
                                attributes: Mapping[str, Mapping] | None = None, num_negatives: int = 3,
                                errors: str = "raise", check_images: bool = True, source: str | None = None,
                                return_report: bool = False):
    """Turn an image-classification ``datasets.Dataset`` into Finedefics training records.

    Args:
        ds: the dataset (imagefolder, or a Hub dataset) with an image and a label column.
        image_column, label_column: their names. Labels may be a ``ClassLabel``, strings, or ints
            (ints need ``category_names``).
        descriptions: per-image attribute descriptions, either a sequence aligned with ``ds`` (e.g.
            from :func:`~.describe.describe_images` or CUB annotations) or a mapping
            ``{category: description}``. Missing ones become ``""`` (counted in the report).
        negatives: ``{category: [hard negatives, most similar first]}`` from a miner
            (``negatives.py``). When None and ``attributes`` is given, they are mined by attribute
            overlap; otherwise rows get no negatives (counted in the report).
        category_descriptions: descriptions used for the negatives (``neg_attributes``); defaults to
            ``descriptions`` when it is a mapping, else each category's first per-image description.
        category_names: a function that cleans label names (e.g. :func:`cub_class_name`), or the
            list of names for integer labels.
        attributes: ``{category: {attribute: value}}`` for mining and for the ``attributes`` column.
        num_negatives: negatives to mine when ``negatives`` is None.
        errors: ``"raise"`` or ``"skip"`` bad rows (missing/corrupt image, bad label).
        check_images: decode every image once (cheaply) to find corrupt ones now.
        source: name used in messages (defaults to the dataset's name or "dataset").
        return_report: also return the :class:`~.schema.ReadReport` (it is always logged).

    Returns:
        A ``datasets.Dataset`` with the schema's columns (``image`` keeps the input's image
        feature), or ``(dataset, report)`` with ``return_report=True``.
    """
    import datasets

    check_error_mode(errors)
    source = source or (ds.info.dataset_name or "dataset")
    for column in (image_column, label_column):
        if column not in ds.column_names:
            raise RecordError(source, None, column, f"column is missing (the dataset has columns {ds.column_names})")
    id_to_name = _label_names(ds, label_column, category_names, source)
    names = sorted(set(id_to_name.values())) if id_to_name else None
    raw = (ds.cast_column(image_column, datasets.Image(decode=False))
           if isinstance(ds.features[image_column], datasets.Image) else ds)
    report = ReadReport(source)
    kept, rows = [], []
    rows_to_check = raw.select_columns([image_column, label_column])
    for index, example in enumerate(tqdm(rows_to_check, desc=f"checking {source}", unit="img", disable=None)):
        report.rows_read += 1
        try:
            if check_images:
                _check_dataset_image(example[image_column], source, index, image_column)
            rows.append(_category_of(example[label_column], id_to_name, source, index, label_column))
            kept.append(index)
        except RecordError as error:
            handle_bad_row(error, report, errors)
    names = names or sorted(set(rows))
    per_row = _resolve_descriptions(descriptions, rows, kept, len(ds), source, report)
    fields = _classification_fields(rows, per_row, names, descriptions, negatives, category_descriptions, attributes,
                                    num_negatives, report)
    out = raw.select(kept).select_columns([image_column])
    if image_column != "image":
        out = out.rename_column(image_column, "image")
    for name, values in fields.items():
        out = out.add_column(name, values)
    if isinstance(ds.features[image_column], datasets.Image):
        out = out.cast_column("image", datasets.Image(decode=True))
    for row, record in enumerate(fields_rows(fields)):
        validate_record({**record, "image": "<image>"}, source, kept[row])
    report.rows_kept = len(kept)
    report.log()
    return (out, report) if return_report else out


def fields_rows(fields: dict[str, list]):
    """Iterate column-wise ``fields`` as row dicts."""
    keys = list(fields)
    for values in zip(*(fields[k] for k in keys)):
        yield dict(zip(keys, values))


def _label_names(ds, label_column: str, category_names, source: str) -> dict | None:
    import datasets

    feature = ds.features[label_column]
    clean = category_names if callable(category_names) else (lambda name: name)
    if isinstance(feature, datasets.ClassLabel):
        return {i: clean(name) for i, name in enumerate(feature.names)}
    if category_names is not None and not callable(category_names):
        return {i: name for i, name in enumerate(category_names)}
    if feature.dtype == "string":
        return {name: clean(name) for name in set(ds[label_column]) if name}
    raise RecordError(source, None, label_column, "holds integer labels with no names; pass category_names=[...]")


def _category_of(label, id_to_name: dict, source: str, row: int, label_column: str) -> str:
    if label is None or label not in id_to_name:
        raise RecordError(source, row, label_column, f"label {label!r} is not a known class")
    return id_to_name[label]


def _check_dataset_image(value, source: str, row: int, column: str) -> None:
    if value is None:
        raise RecordError(source, row, column, "image is missing")
    if isinstance(value, str):
        check_image_file(value, source, row, column)
        return
    data, path = value.get("bytes"), value.get("path")
    if data is None:
        if not path:
            raise RecordError(source, row, column, "image is missing")
        check_image_file(path, source, row, column)
        return
    check_image_bytes(io.BytesIO(data), path or "(embedded image)", source, row, column)


def _resolve_descriptions(descriptions, categories: list[str], kept: list[int], total: int, source: str,
                          report: ReadReport) -> list[str]:
    if descriptions is None:
        per_row = [""] * len(kept)
    elif isinstance(descriptions, Mapping):
        per_row = [descriptions.get(c, "") for c in categories]
    else:
        if len(descriptions) != total:
            raise RecordError(source, None, "descriptions", f"has {len(descriptions)} entries for {total} rows")
        per_row = [descriptions[i] or "" for i in kept]
    missing = sum(1 for d in per_row if not d)
    if missing:
        report.note("rows without a description (attribute = '')", missing)
    return per_row


def _classification_fields(categories, per_row, names, descriptions, negatives, category_descriptions, attributes,
                           num_negatives, report) -> dict[str, list]:
    label_of = {name: i for i, name in enumerate(names)}
    if negatives is None and attributes:
        negatives = mine_by_attributes({n: attributes[n] for n in names if n in attributes}, k=num_negatives)
    if negatives is None:
        report.note("rows without hard negatives (no negatives or attributes given)", len(categories))
        negatives = {}
    canonical = _canonical_descriptions(categories, per_row, descriptions, category_descriptions)
    neg_text = {c: [canonical[n] for n in negatives.get(c, [])]
                if all(canonical.get(n) for n in negatives.get(c, [])) else []
                for c in set(categories)}
    without = sum(1 for c in categories if negatives.get(c) and not neg_text[c])
    if without:
        report.note("rows whose negatives have no description (neg_attributes = [])", without)
    return {
        "category": categories, "label": [label_of[c] for c in categories], "attribute": per_row,
        "attributes": [json.dumps(dict((attributes or {}).get(c, {})), sort_keys=True) for c in categories],
        "neg_categories": [list(negatives.get(c, [])) for c in categories],
        "neg_attributes": [neg_text[c] for c in categories],
        "genus": [""] * len(categories), "is_rare": [False] * len(categories),
    }


def _canonical_descriptions(categories, per_row, descriptions, category_descriptions) -> dict[str, str]:
    if category_descriptions is not None:
        return dict(category_descriptions)
    if isinstance(descriptions, Mapping):
        return dict(descriptions)
    canonical: dict[str, str] = {}
    for category, text in zip(categories, per_row):
        if text and category not in canonical:
            canonical[category] = text  # each category's first per-image description
    return canonical


# ============================================================================= CUB-200-2011
CERTAINTIES = {1: "not visible", 2: "guessing", 3: "probably", 4: "definitely"}
_PLURAL_PARTS = {"wing": "wings", "leg": "legs", "eye": "eyes"}


def cub_class_name(raw: str) -> str:
    """``"001.Black_footed_Albatross"`` -> ``"Black footed Albatross"``."""
    return re.sub(r"^\d+\.", "", raw).replace("_", " ").strip()


def _find(cub_root: Path, candidates: Sequence[str], what: str) -> Path:
    for relative in candidates:
        if (cub_root / relative).is_file():
            return cub_root / relative
    raise FileNotFoundError(f"{what} not found under {cub_root} (looked for {', '.join(candidates)})")


def _numbered_lines(path: Path):
    for number, line in enumerate(read_text(path).splitlines(), start=1):
        if line.strip():
            yield number, line.split()


def read_cub_attribute_names(path: str | Path) -> dict[int, tuple[str, str]]:
    """``attributes.txt``: ``{attribute_id: (group, value)}`` from lines like
    ``1 has_bill_shape::curved_(up_or_down)``."""
    path = Path(path)
    names = {}
    for number, fields in _numbered_lines(path):
        if len(fields) != 2 or "::" not in fields[1] or not fields[0].isdigit():
            raise RecordError(path, f"line {number}", None,
                              f"expected '<id> has_<part>_<kind>::<value>', got {' '.join(fields)!r}")
        group, value = fields[1].split("::", 1)
        names[int(fields[0])] = (group, value)
    return names


def read_cub_attributes(cub_root: str | Path, certainty_threshold: int = 3, noun: str = "bird",
                        errors: str = "raise") -> Records:
    """Per-image attribute descriptions from CUB-200-2011's annotations, with no language model.

    Reads ``attributes.txt`` (``<id> has_<part>_<kind>::<value>``) and
    ``attributes/image_attribute_labels.txt`` (``<image_id> <attribute_id> <is_present>
    <certainty_id> <time>``). An attribute counts when it is present with certainty id >=
    ``certainty_threshold`` (1 not visible, 2 guessing, 3 probably, 4 definitely).

    Returns:
        :class:`~.schema.Records`, one per image, sorted by image id: ``image_id``, ``attributes``
        (JSON ``{group: [values]}``), ``attribute`` (one sentence; ``""`` when no attribute passes
        the threshold, counted in the report), plus ``file_name``, ``category``, ``label`` and
        ``is_train`` where ``images.txt``, ``classes.txt``, ``image_class_labels.txt`` and
        ``train_test_split.txt`` exist.
    """
    check_error_mode(errors)
    if certainty_threshold not in CERTAINTIES:
        raise ValueError(f"certainty_threshold must be one of {sorted(CERTAINTIES)}, got {certainty_threshold!r}")
    cub_root = Path(cub_root)
    names = read_cub_attribute_names(_find(cub_root,
                                           ["attributes.txt", "attributes/attributes.txt", "../attributes.txt"],
                                           "CUB attributes.txt"))
    labels_path = _find(cub_root, ["attributes/image_attribute_labels.txt"], "CUB image_attribute_labels.txt")
    report = ReadReport(str(labels_path))
    present = _read_image_attribute_labels(labels_path, names, certainty_threshold, report, errors)
    extra = _read_cub_image_info(cub_root)
    records = []
    for image_id in sorted(present):
        values = present[image_id]
        description = describe_cub_attributes(values, noun)
        if not description:
            report.note(f"images with no attribute at certainty >= {certainty_threshold} (attribute = '')")
        records.append({"image_id": image_id, "attributes": json.dumps(values), "attribute": description,
                        **extra.get(image_id, {})})
    report.rows_kept = len(records)
    report.log()
    return Records(records, report)


def _read_image_attribute_labels(path: Path, names: dict, threshold: int, report: ReadReport, errors: str) -> dict:
    present: dict[int, dict[str, list[str]]] = defaultdict(dict)
    for number, fields in tqdm(_numbered_lines(path), desc="reading CUB attribute labels", unit="line", disable=None,
                               mininterval=1.0):
        report.rows_read += 1
        try:
            image_id, attribute_id, is_present, certainty = _parse_label_line(path, number, fields, names)
        except RecordError as error:
            handle_bad_row(error, report, errors)
            continue
        if len(fields) != 5:
            report.note("lines with other than 5 fields (first four used, as CUB's own release has a few)")
        values = present[image_id]  # creates the entry: an image with nothing present still gets a record
        if is_present and certainty >= threshold:
            group, value = names[attribute_id]
            values.setdefault(group, []).append(value)
    return present


def _parse_label_line(path: Path, number: int, fields: list[str], names: dict) -> tuple[int, int, int, int]:
    where_line = f"line {number}"
    if len(fields) < 4:
        raise RecordError(path, where_line, None,
                          "expected '<image_id> <attribute_id> <is_present> <certainty_id> <time>', got "
                          f"{' '.join(fields)!r}")
    try:
        image_id, attribute_id, is_present, certainty = (int(f) for f in fields[:4])
    except ValueError:
        raise RecordError(path, where_line, None,
                          f"the first four fields must be integers, got {' '.join(fields[:4])!r}") from None
    if attribute_id not in names:
        raise RecordError(path, where_line, "attribute_id", f"{attribute_id} is not in attributes.txt")
    if is_present not in (0, 1):
        raise RecordError(path, where_line, "is_present", f"must be 0 or 1, got {is_present}")
    if certainty not in CERTAINTIES:
        raise RecordError(path, where_line, "certainty_id", f"must be 1-4, got {certainty}")
    return image_id, attribute_id, is_present, certainty


def _read_cub_image_info(cub_root: Path) -> dict[int, dict]:
    """File names, classes and splits, where CUB's index files are present."""
    info: dict[int, dict] = defaultdict(dict)
    files = {name: cub_root / name
             for name in ("images.txt", "classes.txt", "image_class_labels.txt", "train_test_split.txt")}
    if files["images.txt"].is_file():
        for _, fields in _numbered_lines(files["images.txt"]):
            info[int(fields[0])]["file_name"] = fields[1]
    if files["classes.txt"].is_file() and files["image_class_labels.txt"].is_file():
        classes = {int(f[0]): cub_class_name(f[1]) for _, f in _numbered_lines(files["classes.txt"])}
        label_of = {name: i for i, name in enumerate(sorted(classes.values()))}
        for number, fields in _numbered_lines(files["image_class_labels.txt"]):
            if int(fields[1]) not in classes:
                raise RecordError(files["image_class_labels.txt"], f"line {number}", "class_id",
                                  f"{fields[1]} is not in classes.txt")
            name = classes[int(fields[1])]
            info[int(fields[0])].update(category=name, label=label_of[name])
    if files["train_test_split.txt"].is_file():
        for _, fields in _numbered_lines(files["train_test_split.txt"]):
            info[int(fields[0])]["is_train"] = fields[1] == "1"
    return info


def _clean_cub_value(value: str) -> str:
    value = re.sub(r"[-_](wings|tail)$", "", value)  # "rounded-wings" -> "rounded", "notched_tail" -> "notched"
    return value.replace("_", " ").strip()


def _join_values(values: list[str], conjunction: str = "and") -> str:
    values = list(dict.fromkeys(values))
    return values[0] if len(values) == 1 else ", ".join(values[:-1]) + f" {conjunction} " + values[-1]


def cub_phrase(group: str, values: list[str]) -> str:
    """One CUB attribute group as words: ``has_wing_color: [brown, white]`` -> ``"brown and white wings"``."""
    name = group.removeprefix("has_")
    words = name.split("_")
    kind, part = ((words[-1], " ".join(words[:-1])) if words[-1] in ("color", "pattern", "shape", "length")
                  else (name, ""))
    part = _PLURAL_PARTS.get(part, part)
    cleaned = [_clean_cub_value(v) for v in values]
    if name == "primary_color":
        return f"{_join_values(cleaned)} plumage"
    if kind == "color":
        return f"{_join_values(cleaned)} {part}"
    if kind == "length":
        return f"a {part} {_join_values(cleaned, 'or')}"
    if kind == "shape" and part:
        return (f"{_join_values(cleaned, 'or')} {part}" if part.endswith("s")
                else f"a {_join_values(cleaned, 'or')} {part}")
    if kind == "pattern":
        return f"{_join_values(cleaned)} {part}" if part.endswith("s") else f"a {_join_values(cleaned)} {part}"
    return f"{_join_values(cleaned)} {part or name}".strip()


def describe_cub_attributes(values: Mapping[str, list[str]], noun: str = "bird") -> str:
    """One sentence from CUB attribute values: size and body shape lead, parts follow in CUB's order.

    ``{"has_size": ["small_(5_-_9_in)"], "has_bill_shape": ["cone"], "has_wing_color": ["brown"]}``
    -> ``"a small bird with a cone bill and brown wings."``
    """
    size = [re.sub(r"\s*\(.*\)", "", _clean_cub_value(v)) for v in values.get("has_size", [])]
    shape = [_clean_cub_value(v) for v in values.get("has_shape", [])]
    details = [cub_phrase(group, group_values) for group, group_values in values.items()
               if group not in ("has_size", "has_shape") and group_values]
    if not (size or shape or details):
        return ""
    lead = " ".join(filter(None, [_join_values(size, "or") if size else "",
                                  f"{_join_values(shape, 'or')}" if shape else "", noun]))
    article = "an" if lead[0] in "aeiou" else "a"
    return f"{article} {lead} with {_join_values(details)}." if details else f"{article} {lead}."


def category_attributes(records: Sequence[dict], min_share: float = 0.5) -> dict[str, dict[str, list[str]]]:
    """Per-category attributes: the values present in at least ``min_share`` of the category's images.

    ``records`` need ``category`` and ``attributes`` (JSON ``{name: value or [values]}``).
    """
    counts: dict[str, Counter] = defaultdict(Counter)
    totals: Counter = Counter()
    for record in records:
        if not record.get("category"):
            continue
        totals[record["category"]] += 1
        counts[record["category"]]  # a category whose images show no attribute still gets an (empty) entry
        for group, values in json.loads(record["attributes"] or "{}").items():
            values = values if isinstance(values, list) else [values]  # CUB: lists; synthetic: one value
            counts[record["category"]].update((group, v) for v in values)
    result = {}
    for category, counter in counts.items():
        table: dict[str, list[str]] = {}
        for (group, value), n in counter.items():  # first-seen order: CUB's attribute order
            if n >= min_share * totals[category]:
                table.setdefault(group, []).append(value)
        result[category] = table
    return result


def build_cub_records(cub_root: str | Path, certainty_threshold: int = 3, num_negatives: int = 3,
                      min_share: float = 0.5, check_images: bool = True, errors: str = "raise") -> dict[str, Records]:
    """CUB-200-2011 as Finedefics records, ``{"train": ..., "test": ...}``, from its own annotations.

    Per-image descriptions come from :func:`read_cub_attributes`. Each category's attributes are the
    values present in at least ``min_share`` of its images; hard negatives are the categories with
    the most similar attributes, and their descriptions are written from those category attributes.
    """
    cub_root = Path(cub_root)
    per_image = read_cub_attributes(cub_root, certainty_threshold, errors=errors)
    missing = [r["image_id"] for r in per_image if not {"file_name", "category", "is_train"} <= set(r)]
    if missing:
        raise RecordError(cub_root, f"image {missing[0]}", None, "has no file name, class or split; images.txt, "
                          "classes.txt, image_class_labels.txt and train_test_split.txt are needed")
    class_attributes = category_attributes(per_image, min_share)
    empty = [name for name, table in class_attributes.items() if not table]
    if empty:
        raise ValueError(f"category {empty[0]!r} has no attribute present in >= {min_share:.0%} of its images at "
                         f"certainty >= {certainty_threshold}, so it has no description and cannot be compared; lower "
                         "min_share or certainty_threshold")
    negatives = mine_by_attributes(class_attributes, k=num_negatives)
    descriptions = {name: describe_cub_attributes(attrs) for name, attrs in class_attributes.items()}
    neg_texts = negative_descriptions(negatives, descriptions)
    splits = {"train": Records(report=per_image.report), "test": Records(report=per_image.report)}
    for record in per_image:
        image = cub_root / "images" / record["file_name"]
        if check_images:
            try:
                check_image_file(image, cub_root / "images.txt", f"image {record['image_id']}", "file_name")
            except RecordError as error:
                handle_bad_row(error, per_image.report, errors)
                continue
        splits["train" if record["is_train"] else "test"].append({
            "image": str(image), "category": record["category"], "label": record["label"],
            "attribute": record["attribute"],
            "attributes": record["attributes"], "neg_categories": negatives[record["category"]],
            "neg_attributes": neg_texts[record["category"]], "genus": "", "is_rare": False})
    per_image.report.rows_kept = sum(len(records) for records in splits.values())
    return splits


def read_category_names(files: list[str]) -> list[str]:
    """Category names from reference CSVs (their category column) or text files (one name per line)."""
    names: list[str] = []
    for name in files:
        path = Path(name)
        if not path.is_file():
            raise FileNotFoundError(f"--categories file not found: {path}")
        if path.suffix.lower() == ".csv":
            rows = csv.DictReader(io.StringIO(read_text(path), newline=""))
            if "category" not in (rows.fieldnames or []):
                raise ValueError(f"{path}: no 'category' column to read category names from")
            names += [row["category"].strip() for row in rows if (row["category"] or "").strip()]
        else:
            names += [line.strip() for line in read_text(path).splitlines() if line.strip()]
    return names
