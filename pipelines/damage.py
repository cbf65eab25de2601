"""Files a run reads back that were found damaged (cut short by a full disk, a killed copy, a lost write): moved
aside and named, so the run goes on and never fails the same way every night.

``quarantine(path, what, why, then)`` renames a damaged file or folder to ``<name>.corrupt-<timestamp>`` beside it
(kept for a look, never read again) and prints one warning line naming it, what was wrong and what happens next
(rebuilt from scratch, resumed from an earlier checkpoint). Standard library only.
"""
from __future__ import annotations

import datetime as dt
import sys
from pathlib import Path
from typing import Callable


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def quarantine(path: Path, what: str, why: str, then: str, log: Callable[[str], None] | None = None) -> Path:
    """Move ``path`` aside as ``<name>.corrupt-<timestamp>``; warn ``WARNING: the <what> <path> is damaged (<why>):
    moved aside as <new name>; <then>``. Returns where it went."""
    path = Path(path)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    target, n = path.with_name(f"{path.name}.corrupt-{stamp}"), 1
    while target.exists() or target.is_symlink():
        target, n = path.with_name(f"{path.name}.corrupt-{stamp}-{n}"), n + 1
    path.rename(target)
    (log or _stderr)(f"  WARNING: the {what} {path} is damaged ({why}): moved aside as {target.name}; {then}")
    return target
