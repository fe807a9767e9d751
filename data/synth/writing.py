"""Writing a benchmark folder (:func:`generate_benchmark`): the splits' images and metadata, built in a
locked staging folder and moved into place, and the extras (categories, config, FOCI options, the
reference-format CSV of :func:`write_reference_csv`, the README of :mod:`.readme`).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path

from PIL import Image

from ..negatives import build_option_sets, mine_by_attributes, negative_descriptions
from ..prompts import ObjectNoun, describe_instruction
from ..schema import NEGATIVE_SEPARATOR
from .config import SynthConfig
from .drawing import sample_image
from .readme import benchmark_readme
from .vocabulary import NOUN, build_categories

logger = logging.getLogger(__package__)  # "finedefics_data.synth", as before the split

BENCHMARK_VERSION = 2  # 2: a validation split


def _png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)  # level 1: 5x faster than the default, ~10% larger
    return buffer.getvalue()


def _split_counts(category: dict, config: SynthConfig) -> dict[str, int]:
    train = config.rare_train_per_category if category["is_rare"] else config.train_per_category
    return {"train": train, "validation": config.validation_per_category, "test": config.test_per_category}


def _write_split(root: Path, split: str, categories: list[dict], config: SynthConfig, negatives: dict,
                 neg_descriptions: dict, seen_pixels: set, progress_bar) -> list[dict]:
    """Draw and save one split; returns its metadata rows. No image is identical to another."""
    folder = root / split
    folder.mkdir(parents=True)
    rows = []
    for category in categories:
        for index in range(_split_counts(category, config)[split]):
            image, visible, description, data = _unique_sample(category, split, index, config, seen_pixels)
            file_name = f"{category['label']:03d}-{index:04d}.png"
            (folder / file_name).write_bytes(data)
            rows.append({"file_name": file_name, "category": category["name"], "label": category["label"],
                         "attribute": description, "attributes": json.dumps(visible, sort_keys=True),
                         "neg_categories": negatives[category["name"]],
                         "neg_attributes": neg_descriptions[category["name"]],
                         "genus": category["genus"], "is_rare": category["is_rare"]})
            progress_bar.update(1)
    with open(folder / "metadata.jsonl", "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    return rows


def _unique_sample(category, split, index, config, seen_pixels):
    # Identical pixels in train and test would leak; redraw (next attempt) in the unlikely event.
    for attempt in range(100):
        image, visible, description = sample_image(category, split, index, config, attempt)
        digest = hashlib.blake2b(image.tobytes(), digest_size=16).digest()
        if digest not in seen_pixels:
            seen_pixels.add(digest)
            return image, visible, description, _png_bytes(image)
    raise RuntimeError(f"could not draw a unique image for {category['name']!r} ({split} {index})")


# ----------------------------------------------------------------------------- benchmark folder
def generate_benchmark(output_dir: str | Path, config: SynthConfig = SynthConfig(), progress: bool = True,
                       overwrite: bool = False) -> Path:
    """Generate the synthetic benchmark folder (layout in the package docstring) and return its path.

    The folder is built next to ``output_dir`` (a hidden ``.<name>-*`` folder) and moved into place at the
    end, so an interrupted run never leaves a half-written benchmark; the hidden folder of a run that was
    killed (which cannot clean up after itself) is removed by the next run for the same ``output_dir``.

    Raises:
        ValueError: ``output_dir`` exists and is not empty (pass ``overwrite=True`` to replace a
            previous benchmark; other folders are never deleted).
    """
    from tqdm.auto import tqdm

    output_dir = Path(output_dir)
    _check_output_dir(output_dir, overwrite)
    categories = build_categories(config)
    negatives = mine_by_attributes(categories, k=config.num_negatives)
    neg_descriptions = negative_descriptions(negatives, {c["name"]: c["description"] for c in categories})
    total = sum(sum(_split_counts(c, config).values()) for c in categories)
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    _remove_abandoned_staging(output_dir)
    staging = Path(tempfile.mkdtemp(prefix=_staging_prefix(output_dir), dir=output_dir.parent))
    lock = _StagingLock(staging)
    try:
        seen_pixels: set = set()
        with tqdm(total=total, desc="drawing birds", unit="img", disable=not progress) as bar:
            splits = {split: _write_split(staging, split, categories, config, negatives, neg_descriptions,
                                          seen_pixels, bar)
                      for split in written_splits(config)}
        _write_extras(staging, categories, negatives, splits, config)
        lock.release()  # its file must not travel into the benchmark
        if output_dir.exists():
            shutil.rmtree(output_dir)
        staging.rename(output_dir)
    except BaseException:
        lock.release()
        shutil.rmtree(staging, ignore_errors=True)
        raise
    logger.info("synthetic benchmark: %d categories, %s images in %s", len(categories),
                " / ".join(f"{len(rows)} {split}" for split, rows in splits.items()), output_dir)
    return output_dir


def _staging_prefix(output_dir: Path) -> str:
    return f".{output_dir.name}-"


class _StagingLock:
    """An exclusive lock held on a file inside a staging folder while its run is alive.

    The operating system drops the lock when the process dies, even when it is killed (SIGKILL, OOM), so a
    staging folder whose lock can be taken belongs to no running process (:func:`_remove_abandoned_staging`).
    Without ``fcntl`` (Windows) nothing is locked and abandoned folders are left alone.
    """

    FILE_NAME = ".finedefics-staging.lock"

    def __init__(self, staging: Path):
        self.path = staging / self.FILE_NAME
        self.handle = open(self.path, "w")
        if _flock(self.handle, blocking=True) is None:
            self.release()  # no locking here: a lock file nobody holds would let another run delete this folder

    def release(self) -> None:
        if self.handle is not None:
            self.path.unlink(missing_ok=True)
            self.handle.close()  # closing drops the lock
            self.handle = None


def _flock(handle, blocking: bool) -> bool | None:
    """Take an exclusive lock on ``handle``: True when taken, False when another process holds it, None
    where the platform has no ``fcntl``."""
    try:
        import fcntl
    except ImportError:
        return None
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
    except BlockingIOError:
        return False
    return True


def _remove_abandoned_staging(output_dir: Path) -> None:
    """Delete the staging folders of earlier runs for ``output_dir`` that were killed mid-way (their lock is
    free); a folder of a run still going holds its lock and is kept."""
    for folder in output_dir.parent.iterdir():
        lock_path = folder / _StagingLock.FILE_NAME
        if not (folder.name.startswith(_staging_prefix(output_dir)) and lock_path.is_file()):
            continue
        with open(lock_path, "a") as handle:
            if not _flock(handle, blocking=False):
                continue
        logger.info("removing %s, left behind by a run that was killed mid-way", folder)
        shutil.rmtree(folder, ignore_errors=True)


def written_splits(config: SynthConfig) -> tuple[str, ...]:
    return ("train", "validation", "test") if config.validation_per_category else ("train", "test")


def _check_output_dir(output_dir: Path, overwrite: bool) -> None:
    if not output_dir.exists() or not any(output_dir.iterdir()):
        return
    if not overwrite:
        raise ValueError(f"{output_dir} exists and is not empty; choose a new folder or pass overwrite (--overwrite)")
    if not (output_dir / "categories.json").is_file():
        raise ValueError(f"{output_dir} is not empty and is not a synthetic benchmark (no categories.json); refusing "
                         "to delete it")


def _write_extras(root: Path, categories: list[dict], negatives: dict, splits: dict, config: SynthConfig) -> None:
    keys = ("name", "label", "genus", "attributes", "description", "is_rare", "siblings", "negatives", "n_train",
            "n_validation", "n_test")
    entries = []
    for category in categories:
        counts = _split_counts(category, config)
        full = {**category, "negatives": negatives[category["name"]], "n_train": counts["train"],
                "n_validation": counts["validation"], "n_test": counts["test"]}
        entries.append({k: full[k] for k in keys})
    _write_json(root / "categories.json", entries)
    _write_json(root / "config.json", {"version": BENCHMARK_VERSION, **asdict(config)})
    test_records = [{"image": f"test/{row['file_name']}", "category": row["category"]} for row in splits["test"]]
    foci = build_option_sets(test_records, negatives, num_options=min(4, config.num_categories), seed=config.seed)
    _write_json(root / "foci_test.json", foci)
    write_reference_csv(root / "train_reference.csv", splits["train"], image_prefix="train/")
    (root / "README.md").write_text(benchmark_readme(entries, config), encoding="utf-8")


def _write_json(path: Path, data) -> None:
    path.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


REFERENCE_COLUMNS = ("question", "answer", "type", "image_path", "image_path_1", "image_path_2", "attribute",
                     "neg_attribute", "category", "neg_category")


def write_reference_csv(path: str | Path, rows: list[dict], image_prefix: str = "",
                        question: str | None = None) -> Path:
    """Write records in the reference implementation's stage I CSV format.

    Each row asks for the image's attributes and answers with its description; negatives share one
    cell, separated by a tab and a newline. Image paths are relative to the benchmark folder.
    """
    if question is None:
        question = describe_instruction(ObjectNoun.of(NOUN))  # the trainer's stage I instruction
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=REFERENCE_COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({"question": question, "answer": row["attribute"], "type": "single-image",
                             "image_path": image_prefix + row["file_name"], "image_path_1": "", "image_path_2": "",
                             "attribute": row["attribute"],
                             "neg_attribute": NEGATIVE_SEPARATOR.join(row["neg_attributes"]),
                             "category": row["category"],
                             "neg_category": NEGATIVE_SEPARATOR.join(row["neg_categories"])})
    return Path(path)
