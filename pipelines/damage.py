"""Files a run reads back that were found damaged (cut short by a full disk, a killed copy, a lost write): moved
aside and named, so the run goes on and never fails the same way every night.

``quarantine(path, what, why, then)`` renames a damaged file or folder to ``<name>.corrupt-<timestamp>`` beside it
(kept for a look, never read again) and prints one warning line naming it, what was wrong and what happens next
(rebuilt from scratch, resumed from an earlier checkpoint).

``open_or_rebuild(path, load, what)`` is the one way a run opens what it can build again (the SQLite caches of
``pipelines.cache``, the bm25 index, the CTranslate2 and ONNX conversions): ``load()`` opens ``path`` and builds it
when it is missing; when it fails as a damaged file does, ``path`` is moved aside and ``load()`` runs again on an
empty place. Standard library only.
"""
from __future__ import annotations

import datetime as dt
import sys
from pathlib import Path
from typing import Callable, TypeVar

T = TypeVar("T")


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def quarantine(path: Path, what: str, why: str, then: str, log: Callable[[str], None] | None = None,
               companions: tuple[str, ...] = ()) -> Path:
    """Move ``path`` aside as ``<name>.corrupt-<timestamp>``, with the files named ``<name><suffix>`` for each of
    ``companions`` (a SQLite store's ``-wal`` and ``-shm``, which must never meet a new store); warn ``WARNING: the
    <what> <path> is damaged (<why>): moved aside as <new name>; <then>``. Returns where it went."""
    path = Path(path)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    target, n = path.with_name(f"{path.name}.corrupt-{stamp}"), 1
    while target.exists() or target.is_symlink():
        target, n = path.with_name(f"{path.name}.corrupt-{stamp}-{n}"), n + 1
    path.rename(target)
    for suffix in companions:
        side = path.with_name(path.name + suffix)
        if side.exists():
            side.rename(target.with_name(target.name + suffix))
    (log or _stderr)(f"  WARNING: the {what} {path} is damaged ({why}): moved aside as {target.name}; {then}")
    return target


def what_failed(exc: BaseException) -> str:
    """``Type: first line of the message`` (at most 200 characters), for a warning."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0][:200] if lines else ''}".rstrip(": ")


def any_damage(exc: BaseException) -> str | None:
    """Every failure to open counts as damage, except the environment's (no permission, no memory), which moving
    the file aside would not cure."""
    return None if isinstance(exc, (PermissionError, MemoryError)) else what_failed(exc)


def open_or_rebuild(path: Path, load: Callable[[], T], what: str,
                    damaged: Callable[[BaseException], str | None] = any_damage, companions: tuple[str, ...] = (),
                    then: str = "rebuilt from scratch", log: Callable[[str], None] | None = None) -> T:
    """``load()``, which opens ``path`` and builds it when it is missing. When it fails and ``damaged(exc)`` says
    what is wrong (None: not damage, e.g. a lock held elsewhere; raised as it is), ``path`` is moved aside as
    ``<name>.corrupt-<timestamp>`` with a warning naming it, and ``load()`` builds it afresh; a failure of that
    second ``load()`` is raised as it is (the damage was not in the file)."""
    path = Path(path)
    try:
        return load()
    except Exception as exc:
        why = damaged(exc)
        if why is None or not (path.exists() or path.is_symlink()):
            raise
    quarantine(path, what, why, then, log, companions)
    return load()
