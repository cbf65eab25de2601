"""A hand-written day and a registry to promote in: three users, six items, and scorer models registered as the
pipeline's register stage registers them (used by the promotion tests and the promote DAG's test)."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa

from jobs import warehouse

DS = "2026-01-01"
ITEMS = ["i1", "i2", "i3", "i4", "i5", "i6"]       # item_idx 1..6
# u0: train i1 i2, valid i3, test i4;  u1: train i5, valid i2, test i5 (a repeat);  u2: train i1 only (no test)
SEQ = [(0, 1, 0, "train"), (0, 2, 1, "train"), (0, 3, 2, "valid"), (0, 4, 3, "test"),
       (1, 5, 0, "train"), (1, 2, 1, "valid"), (1, 5, 2, "test"), (2, 1, 0, "train")]
BETTER = [1, 2, 3, 6, 5, 4]       # item scores that rank both test targets first
WORSE = [6, 5, 4, 3, 2, 1]


def write_day(home: Path, ds: str = DS) -> Path:
    """The day's sequences, user map and item map under ``home`` (a copy of the first day's for a later ``ds``)."""
    if ds != DS and warehouse.partition_path(home, "sequences", DS).exists():
        for table in ("sequences", "user_map", "item_map"):
            shutil.copytree(warehouse.partition_path(home, table, DS), warehouse.partition_path(home, table, ds))
        return home
    u, i, p, s = zip(*SEQ, strict=True)
    warehouse.write_arrow(pa.table({"user_idx": pa.array(u, pa.int32()), "item_idx": pa.array(i, pa.int32()),
                                 "position": pa.array(p, pa.int32()), "split": pa.array(s, pa.string())}),
                       home, "sequences", ds)
    warehouse.write_arrow(pa.table({"user_idx": pa.array([0, 1, 2], pa.int32()),
                                 "user_id": pa.array(["u0", "u1", "u2"], pa.string())}), home, "user_map", ds)
    warehouse.write_arrow(pa.table({"item_idx": pa.array(range(1, 7), pa.int32()),
                                 "item_id": pa.array(ITEMS, pa.string())}), home, "item_map", ds)
    return home


def register(home: Path, ds: str, item_scores: list[float], evaluated: bool = True, model: str = "wals") -> str:
    """Register a top-k scorer as ``model`` under alias challenger (with the evaluate stage's tags when
    ``evaluated``); returns its version."""
    import mlflow

    from pipelines import registry
    from pipelines.config import load_config
    from pipelines.serving import save_scorer

    cfg = load_config(None, [])
    c = registry.client(cfg, home)
    mdir = save_scorer(home / "models-in-test" / f"{model}-{ds}-{len(list(home.glob('models-in-test/*')))}", "test",
                       ["u0", "u1", "u2"], ["", *ITEMS], user_emb=np.ones((3, 1), np.float32),
                       item_emb=np.array([[0.0], *([s] for s in item_scores)], np.float32),
                       item_bias=np.zeros(7, np.float32), hist_indptr=np.zeros(4, np.int64),
                       hist_indices=np.zeros(0, np.int32), top_k=5)
    metrics = {"full": {"NDCG@10": 0.5, "HR@10": 1.0}} if evaluated else {}
    with mlflow.start_run():
        return registry._register(c, cfg, ds, model, mdir, metrics)["version"]
