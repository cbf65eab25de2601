"""A content-addressed key-value cache on SQLite (``RECPIPE_HOME/cache/<name>.sqlite``).

Keys are content hashes (``features.text.content_hash``): the same inputs give the same key on every day, so
an unchanged entity is never generated or encoded twice. Each ``put_many`` is one committed transaction, so a
run that is killed keeps everything it committed and the next run resumes from there. WAL mode lets Airflow
tasks of different days read while one writes. For a multi-node deployment, put ``cache/`` on storage every
worker can reach, or run the LLM stages on one worker (they are in their own Airflow pool).

A cache found damaged when it is opened (a file cut short by a full disk or a copy: SQLite's ``quick_check`` fails,
or it is not a database) is moved aside as ``<name>.sqlite.corrupt-<time>`` (with its ``-wal`` and ``-shm``) with a
warning naming it, and the run starts with an empty cache (``pipelines.damage.open_or_rebuild``): it recomputes
what it needs instead of failing every night. The check and the move happen under ``<name>.sqlite.lock``, so two
processes opening one cache never both move it.
"""
from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Iterable

from pipelines.damage import open_or_rebuild, what_failed
from pipelines.locks import waiting


def sqlite_damage(exc: BaseException) -> str | None:
    """What is wrong when opening a SQLite file failed as a damaged one does (malformed, not a database); None for
    what moving it aside would not cure (locked or busy, no permission, no space: ``OperationalError``)."""
    if isinstance(exc, sqlite3.DatabaseError) and not isinstance(exc, sqlite3.OperationalError):
        return what_failed(exc)
    return None


class Cache:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with waiting(self.path.with_name(self.path.name + ".lock"), f"opening the cache {self.path}"):
            self._db = open_or_rebuild(self.path, self._open, "cache", sqlite_damage, companions=("-wal", "-shm"),
                                       then="starting with an empty cache (what it held is computed again)")

    def _open(self) -> sqlite3.Connection:
        """Connect, check the file whole (``quick_check``: every page readable, no index disagreeing with its
        table), create the table if new."""
        db = sqlite3.connect(self.path, timeout=60)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            found = [r[0] for r in db.execute("PRAGMA quick_check")]
            if found != ["ok"]:
                raise sqlite3.DatabaseError(f"quick_check: {'; '.join(found[:3])}")
            db.execute("CREATE TABLE IF NOT EXISTS entries (key TEXT PRIMARY KEY, value BLOB NOT NULL, "
                       "created REAL NOT NULL)")
            db.commit()
        except BaseException:
            db.close()
            raise
        return db

    def get_many(self, keys: Iterable[str], chunk: int = 900) -> dict[str, bytes]:
        """The cached values of those ``keys`` that are present."""
        keys = list(dict.fromkeys(keys))
        found: dict[str, bytes] = {}
        for i in range(0, len(keys), chunk):
            part = keys[i:i + chunk]
            rows = self._db.execute(f"SELECT key, value FROM entries WHERE key IN ({','.join('?' * len(part))})", part)
            found.update(rows)
        return found

    def put_many(self, items: dict[str, bytes]) -> None:
        """Insert or replace ``items`` in one committed transaction."""
        if not items:
            return
        now = time.time()
        with self._db:
            self._db.executemany("INSERT OR REPLACE INTO entries (key, value, created) VALUES (?, ?, ?)",
                                 [(k, v, now) for k, v in items.items()])

    def __len__(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM entries").fetchone()[0]

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> "Cache":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
