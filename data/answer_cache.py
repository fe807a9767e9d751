"""The on-disk cache of model answers that makes ``finedefics data describe`` resumable.

Every answer a model gives is stored under a key made of what determines it: the image's content hash
(``""`` for a text-only prompt), the exact prompt, the model and the model's revision. A rerun, or a run
killed at any moment, asks again only what the cache lacks.

The cache is one SQLite file: each batch of answers is committed in one transaction, so a run killed
mid-write loses at most the batch in flight and never leaves a half-written answer behind.
"""

from __future__ import annotations

import hashlib
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

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
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
