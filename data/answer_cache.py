"""The on-disk cache of model answers that makes ``finedefics data describe`` resumable.

Every answer a model gives is stored under a key made of what determines it: the image's content hash
(``""`` for a text-only prompt), the exact prompt, the model and the model's revision. A rerun, or a run
killed at any moment, asks again only what the cache lacks.

The cache is one SQLite file: each batch of answers is committed in one transaction, so a run killed
mid-write loses at most the batch in flight and never leaves a half-written answer behind.

Many processes (``accelerate launch`` / ``torchrun``): one SQLite file has one writer at a time, and ranks that
commit side by side would wait on each other's locks or fail with "database is locked". So the shared file is
only read during a launch (:class:`RankAnswerCache`), each rank commits its new answers to a file of its own
beside it (``NAME.rankR.sqlite``), and rank 0 alone folds those into the shared file (:func:`merge_rank_caches`)
once every rank is done, and again at the start of the next run for the files a killed launch left behind: a
rerun with any number of processes finds every answer any rank committed.
"""

from __future__ import annotations

import hashlib
import re
import sqlite3
from collections.abc import Iterable
from pathlib import Path

_SCHEMA = """CREATE TABLE IF NOT EXISTS answers (
    key TEXT PRIMARY KEY, image TEXT NOT NULL, prompt TEXT NOT NULL, model TEXT NOT NULL, revision TEXT NOT NULL,
    answer TEXT NOT NULL)"""


def content_hash(data: bytes) -> str:
    """The SHA-256 of a file's bytes: the same picture under another name is the same image."""
    return hashlib.sha256(data).hexdigest()


def answer_key(image_hash: str, prompt: str, model: str, revision: str) -> str:
    """One string for the four things an answer depends on (NUL-separated: none of them holds a NUL)."""
    return hashlib.sha256("\0".join((image_hash, prompt, model, revision)).encode("utf-8")).hexdigest()


class AnswerCache:
    """``{answer_key: answer}`` in a SQLite file; :meth:`put_many` commits a batch atomically."""

    def __init__(self, path: str | Path, read_only: bool = False):
        self.path = Path(path)
        try:
            if read_only:  # another process may be merging into it later, never while this one reads
                self._db = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True)
                self._db.execute("SELECT COUNT(*) FROM answers")
            else:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._db = sqlite3.connect(str(self.path))
                self._db.execute(_SCHEMA)
                self._db.commit()
        except sqlite3.DatabaseError as error:
            raise ValueError(f"answer cache {self.path} cannot be read ({error}); delete it to start afresh") from None

    def get(self, key: str) -> str | None:
        row = self._db.execute("SELECT answer FROM answers WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def get_many(self, keys: Iterable[str]) -> dict[str, str]:
        """The cached answers among ``keys`` (absent keys are left out)."""
        keys = list(dict.fromkeys(keys))
        found = {}
        for start in range(0, len(keys), 500):  # SQLite caps the number of parameters in one statement
            chunk = keys[start:start + 500]
            marks = ",".join("?" * len(chunk))
            found.update(self._db.execute(f"SELECT key, answer FROM answers WHERE key IN ({marks})", chunk))
        return found

    def put_many(self, entries: Iterable[tuple[str, str, str, str, str, str]]) -> None:
        """Store ``(key, image_hash, prompt, model, revision, answer)`` rows in one transaction."""
        with self._db:
            self._db.executemany("INSERT OR REPLACE INTO answers VALUES (?, ?, ?, ?, ?, ?)", list(entries))

    def __len__(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM answers").fetchone()[0]

    def close(self) -> None:
        self._db.close()


def rank_cache_path(path: str | Path, rank: int) -> Path:
    """The file rank ``rank`` of a launch writes its answers to, beside the shared cache ``path``."""
    path = Path(path)
    return path.with_name(f"{path.stem}.rank{rank}{path.suffix}")


def rank_cache_files(path: str | Path) -> list[Path]:
    """The rank files beside the shared cache ``path`` (left by a launch, running or killed), by rank."""
    path = Path(path)
    pattern = re.compile(rf"{re.escape(path.stem)}\.rank(\d+){re.escape(path.suffix)}")
    found = [(int(match.group(1)), candidate) for candidate in path.parent.glob(f"{path.stem}.rank*{path.suffix}")
             if (match := pattern.fullmatch(candidate.name))]
    return [candidate for _, candidate in sorted(found)]


def merge_rank_caches(path: str | Path) -> int:
    """Fold every rank file beside ``path`` into the shared cache (one transaction each), then delete it.

    Only one process may call this, while no rank writes. Returns the number of answers read from rank files.
    """
    merged = 0
    shared = AnswerCache(path)
    try:
        for rank_file in rank_cache_files(path):
            try:
                shared._db.execute("ATTACH DATABASE ? AS rank_cache", (str(rank_file),))
                try:
                    with shared._db:
                        merged += shared._db.execute("SELECT COUNT(*) FROM rank_cache.answers").fetchone()[0]
                        shared._db.execute("INSERT OR REPLACE INTO answers SELECT * FROM rank_cache.answers")
                finally:
                    shared._db.execute("DETACH DATABASE rank_cache")
            except sqlite3.DatabaseError as error:
                raise ValueError(f"answer cache {rank_file} cannot be read ({error}); delete it to ask its answers "
                                 "again") from None
            rank_file.unlink()
            for journal in rank_file.parent.glob(rank_file.name + "-*"):  # a killed writer's rollback journal
                journal.unlink()
    finally:
        shared.close()
    return merged


class RankAnswerCache:
    """One rank's view of the cache during a launch: reads the shared file and its own, writes only its own."""

    def __init__(self, path: str | Path, rank: int):
        self.path = Path(path)
        self.shared = AnswerCache(self.path, read_only=True)
        self.own = AnswerCache(rank_cache_path(self.path, rank))

    def get_many(self, keys: Iterable[str]) -> dict[str, str]:
        keys = list(keys)
        found = self.shared.get_many(keys)
        found.update(self.own.get_many([key for key in keys if key not in found]))
        return found

    def put_many(self, entries: Iterable[tuple[str, str, str, str, str, str]]) -> None:
        self.own.put_many(entries)

    def close(self) -> None:
        self.shared.close()
        self.own.close()
