"""A day's warehouse tables move together: a run that fails part-way puts back the generation it started from.

Stages publish their partitions one by one (each atomically), so a re-run of a day whose new input passes
validation but fails at split would otherwise leave ``interactions`` new and ``sequences`` old: tables that no
longer agree. ``Generation`` hard-links every ``warehouse/<table>/ds=<ds>`` partition into ``runs/<ds>/.generation``
before the run (no data is copied: partitions are replaced by renaming, never edited in place), and on failure
swaps back every partition that changed and removes the ones the run created. On success the snapshot is dropped.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from jobs.warehouse import swap_in


def _partitions(warehouse: Path, ds: str) -> dict[str, Path]:
    if not warehouse.exists():
        return {}
    return {t.name: t / f"ds={ds}" for t in sorted(warehouse.iterdir())
            if t.is_dir() and not t.name.startswith(("_", ".")) and (t / f"ds={ds}").is_dir()}


def _fingerprint(path: Path) -> list[tuple[str, int]]:
    """What identifies a partition's content here: its files and their inodes (a rewrite makes new inodes)."""
    return sorted((str(f.relative_to(path)), f.stat().st_ino) for f in path.rglob("*") if f.is_file())


class Generation:
    def __init__(self, home: Path, ds: str, run_dir: Path) -> None:
        self.warehouse, self.ds = Path(home) / "warehouse", ds
        self.snap = Path(run_dir) / ".generation"

    def __enter__(self) -> "Generation":
        shutil.rmtree(self.snap, ignore_errors=True)  # a run killed before it could clean up
        self.before = {}
        for table, part in _partitions(self.warehouse, self.ds).items():
            shutil.copytree(part, self.snap / table, copy_function=os.link)
            self.before[table] = _fingerprint(part)
        return self

    def restore(self) -> list[str]:
        """Put the day's partitions back as they were when the run started; the tables restored or removed."""
        changed = []
        for table, part in _partitions(self.warehouse, self.ds).items():
            if table not in self.before:  # created by the failed run
                shutil.rmtree(part)
                changed.append(table)
        for table, fp in self.before.items():
            part = self.warehouse / table / f"ds={self.ds}"
            if part.exists() and _fingerprint(part) == fp:
                continue
            changed.append(table)  # rewritten or removed by the failed run
            tmp = part.parent / f"_restore-{part.name}"
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(self.snap / table, tmp, copy_function=os.link)
            swap_in(tmp, part)
        return sorted(changed)

    def __exit__(self, exc_type, exc, tb) -> None:
        shutil.rmtree(self.snap, ignore_errors=True)
