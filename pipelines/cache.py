"""A content-addressed key-value cache on SQLite (``RECPIPE_HOME/cache/<name>.sqlite``).

Keys are content hashes (``features.text.content_hash``): the same inputs give the same key on every day, so
an unchanged entity is never generated or encoded twice. Each ``put_many`` is one committed transaction, so a
run that is killed keeps everything it committed and the next run resumes from there. WAL mode lets Airflow
tasks of different days read while one writes. For a multi-node deployment, put ``cache/`` on storage every
worker can reach, or run the LLM stages on one worker (they are in their own Airflow pool).
"""
from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Iterable


class Cache:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, timeout=60)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS entries (key TEXT PRIMARY KEY, value BLOB NOT NULL, "
                         "created REAL NOT NULL)")
        self._db.commit()

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
