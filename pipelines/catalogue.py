"""The day's catalogue as the LLM stages read it: item facts, users' train histories, ids, popularity."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow.compute as pc

from jobs import warehouse
from pipelines.context import StageContext


@dataclass(frozen=True)
class Catalogue:
    items: dict[int, dict]           # item_idx -> its ``items`` row (title, brand, ...); ``{item_id}`` if it has none
    histories: dict[int, list[int]]  # user_idx -> train-part item_idx, oldest first (users without train items absent)
    item_ids: list[str]              # item_ids[item_idx - 1] (items are 1..N)
    user_ids: list[str]              # user_ids[user_idx]
    popularity: np.ndarray           # (N + 1,) train interactions per item (column 0 = padding)
    activity: np.ndarray             # (U,) train interactions per user

    def history_rows(self, user_idx: int) -> list[dict]:
        """The ``items`` rows of a user's train items, oldest first."""
        return [self.items[i] for i in self.histories.get(user_idx, [])]


def load_catalogue(ctx: StageContext) -> Catalogue:
    imap = warehouse.read_arrow(ctx.home, "item_map", ctx.ds).sort_by("item_idx")
    umap = warehouse.read_arrow(ctx.home, "user_map", ctx.ds).sort_by("user_idx")
    by_id = {r["item_id"]: r for r in warehouse.read_arrow(ctx.home, "items", ctx.ds).to_pylist()}
    item_ids = imap.column("item_id").to_pylist()
    rows = {int(i): by_id.get(iid, {"item_id": iid})
            for i, iid in zip(imap.column("item_idx").to_pylist(), item_ids, strict=True)}
    seq = warehouse.read_arrow(ctx.home, "sequences", ctx.ds, columns=["user_idx", "item_idx", "position", "split"])
    train = seq.filter(pc.equal(seq.column("split"), "train")).sort_by([("user_idx", "ascending"),
                                                                        ("position", "ascending")])
    u = train.column("user_idx").to_numpy()
    it = train.column("item_idx").to_numpy()
    bounds = np.flatnonzero(np.diff(u)) + 1
    hist = {int(uu[0]): ii.tolist()
            for uu, ii in zip(np.split(u, bounds), np.split(it, bounds), strict=True) if len(uu)}
    return Catalogue(rows, hist, item_ids, umap.column("user_id").to_pylist(),
                     np.bincount(it, minlength=imap.num_rows + 1), np.bincount(u, minlength=umap.num_rows))
