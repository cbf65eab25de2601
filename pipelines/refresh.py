"""Incremental refresh: whether a day builds on an earlier one (``refresh.mode``), and the pieces that carry state
across days by id (ids are stable; the integer indices of ``user_map``/``item_map`` are not: a new item shifts them).

``plan(ctx)`` is the day's decision, the same for every stage that asks (it depends only on the days already
run in the home), kept in ``runs/<ds>/refresh.json``: ``incremental`` on the latest earlier day that ran without a
failed stage (all its stages, or those a ``--stages``/``--until`` run chose) when ``refresh.mode=incremental``, unless
``refresh.full_every_days`` have passed since the last full day, or there is no such day. A stage whose input from
that day is missing (it did not run then) runs as on a full day and says so. Each stage says in its record what it recomputed and what it reused (``details["refresh"]``).
"""
from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from jobs.warehouse import write_json
from pipelines.context import StageContext
from pipelines.summary import read_json


@dataclass(frozen=True)
class Plan:
    mode: str            # "full" | "incremental"
    base: str | None     # the earlier day an incremental day builds on
    reason: str

    @property
    def incremental(self) -> bool:
        return self.mode == "incremental"


def _recorded(home: Path, ds: str) -> dict:
    return read_json(home / "runs" / ds / "refresh.json") or {"mode": "full"}  # days before refresh: full


def base_days(home: Path) -> list[str]:
    """The days a later day may build on, oldest first: those whose summary has no failed stage."""
    return sorted(p.parent.name for p in (home / "runs").glob("*/summary.json")
                  if read_json(p).get("status") in ("success", "partial"))


def plan(ctx: StageContext) -> Plan:
    r = ctx.cfg.refresh
    if r.mode == "full":
        p = Plan("full", None, "refresh.mode=full")
    else:
        earlier = [d for d in base_days(ctx.home) if d < ctx.ds]
        if not earlier:
            p = Plan("full", None, "no earlier day without a failed stage in this home to build on")
        else:
            fulls = [d for d in earlier if _recorded(ctx.home, d)["mode"] == "full"]
            since = (dt.date.fromisoformat(ctx.ds) - dt.date.fromisoformat(fulls[-1])).days if fulls else None
            if since is None or since >= r.full_every_days:
                p = Plan("full", None, f"a full day every {r.full_every_days} days (last full day: "
                                       f"{fulls[-1] if fulls else 'none'})")
            else:
                p = Plan("incremental", earlier[-1], f"builds on {earlier[-1]} (last full day {fulls[-1]}, "
                                                     f"{since} of {r.full_every_days} days ago)")
    write_json(ctx.run_dir / "refresh.json", asdict(p))
    return p


def rows_by_id(prev_ids: list[str], prev_rows: np.ndarray, ids: list[str], fresh: np.ndarray) -> tuple[np.ndarray, int]:
    """``fresh`` (rows indexed like ``ids``) with every row whose id is in ``prev_ids`` replaced by the earlier row;
    returns it and how many rows were carried over. ``prev_rows`` is indexed like ``prev_ids``."""
    where = {k: i for i, k in enumerate(prev_ids)}
    pairs = np.array([(i, where[k]) for i, k in enumerate(ids) if k in where], dtype=np.int64).reshape(-1, 2)
    out = fresh.copy()
    out[pairs[:, 0]] = prev_rows[pairs[:, 1]]
    return out, len(pairs)


def uncarried_cold(ids: list[str], cold: np.ndarray | None) -> list[str]:
    """``ids`` (indexed like ``cold``, (N + 1,) flags of ``EvalData.cold``) with the cold items renamed so that no
    earlier day's row is carried to them: an item trained on yesterday may be held out today, and a warm start must
    not bring its trained row back (it starts fresh, as a new item does)."""
    if cold is None:
        return ids
    return [f"{i}\x00cold" if c else i for i, c in zip(ids, cold, strict=True)]


def carry_item_rows(state: dict, prev_items: list[str], items: list[str], module) -> tuple[dict, dict]:
    """An earlier day's trainable weights for ``module`` (whose items are ``items``, padding first): every tensor
    indexed by item (first dimension ``len(prev_items)``, and ``len(items)`` in the module) is re-indexed by item id,
    new items keeping the module's fresh rows; tensors of the same shape are taken as they are, others skipped;
    the module's parameters the state lacks are listed (``tensors_missing``). Returns the state to load and what
    was done."""
    import torch

    own = dict(module.named_parameters())
    same = prev_items == items
    out, reindexed, skipped = {}, [], []
    for name, value in state.items():
        target = own.get(name)
        if target is None:
            skipped.append(name)
        elif not same and value.shape[:1] == (len(prev_items),) and target.shape[:1] == (len(items),) \
                and value.shape[1:] == target.shape[1:]:
            rows, _ = rows_by_id(prev_items, value.detach().cpu().numpy(), items, target.detach().cpu().numpy())
            out[name] = torch.from_numpy(rows)
            reindexed.append(name)
        elif value.shape == target.shape:
            out[name] = value
        else:
            skipped.append(name)
    known = len(set(prev_items) & set(items))
    missing = [name for name in own if name not in state]  # e.g. text-aware items' map after an ID-only day
    return out, {"tensors_loaded": len(out), "tensors_skipped": skipped, "tensors_missing": missing,
                 "reindexed_by_item": reindexed,
                 "items_carried": max(known - 1, 0), "new_items": len(items) - known}
