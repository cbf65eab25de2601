"""Weighted ALS for implicit feedback on two engines, and the factor tables they write and read.

Meaning of the hyperparameters, identical on both engines (Hu, Koren and Volinsky 2008):
preference p_ui = 1[count_ui > 0], confidence c_ui = 1 + alpha * count_ui, L2 penalty ``regularization``,
``factors`` latent dimensions, ``iterations`` ALS sweeps.

* ``implicit`` (default, one node): ``implicit.cpu.als`` solves with c_ui taken directly from the matrix
  values, so it is given ``1 + alpha * count`` with its own alpha at 1. BLAS runs single-threaded while it
  fits (``threadpoolctl``); implicit's own threads come from ``wals.threads``.
* ``spark`` (cluster): ``jobs/wals.py``, Spark ML ``ALS(implicitPrefs=True)``, submitted like ingest and split.
  Spark multiplies the penalty of every row by its number of interactions (ALS-WR), so it receives
  ``regularization / mean interactions per row`` to keep the penalty on the same scale.
"""
from __future__ import annotations

import dataclasses
import time

import numpy as np
import pyarrow as pa

from features.interactions import count_matrix
from jobs import common
from pipelines.config import WalsConfig
from pipelines.context import StageContext

SCRATCH = "scratch"  # zone of the train-only fit used for valid metrics and tuning


def fit_implicit(m, p: WalsConfig) -> tuple[np.ndarray, np.ndarray, float]:
    """(U, F) user and (N + 1, F) item factors from a (U, N + 1) count matrix; returns fit seconds too."""
    from implicit.cpu.als import AlternatingLeastSquares
    from threadpoolctl import threadpool_limits

    conf = m.copy()
    conf.data = 1.0 + p.alpha * conf.data                                 # c_ui = 1 + alpha * count
    with threadpool_limits(1, "blas"):  # implicit checks BLAS threads when constructed, so build it inside
        model = AlternatingLeastSquares(factors=p.factors, regularization=p.regularization, alpha=1.0,
                                        iterations=p.iterations, random_state=p.seed, num_threads=p.threads,
                                        calculate_training_loss=False)
        t0 = time.perf_counter()
        model.fit(conf.tocsr(), show_progress=False)
    return np.asarray(model.user_factors), np.asarray(model.item_factors), time.perf_counter() - t0


def _factor_table(ids: list[str], vecs: np.ndarray, id_col: str, idx_col: str, start: int) -> pa.Table:
    n, f = vecs.shape[0] - start, vecs.shape[1]
    flat = pa.array(np.ascontiguousarray(vecs[start:], np.float32).ravel(), pa.float32())
    return pa.table({id_col: pa.array(ids[start:], pa.string()),
                     idx_col: pa.array(np.arange(start, start + n), pa.int32()),
                     "factors": pa.FixedSizeListArray.from_arrays(flat, f).cast(pa.list_(pa.float32()))})


def spark_regularization(ctx: StageContext, reg: float, splits: tuple[str, ...]) -> float:
    """Spark's regParam for implicit's penalty ``reg``: divided by the mean interactions per user (ALS-WR)."""
    seq = common.read_arrow(ctx.home, "sequences", ctx.ds, columns=["user_idx", "split"])
    n = int(np.isin(seq.column("split").to_numpy(zero_copy_only=False), splits).sum())
    n_users = len(np.unique(seq.column("user_idx").to_numpy()))
    return reg / max(n / n_users, 1.0)


def fit(ctx: StageContext, p: WalsConfig, splits: tuple[str, ...], zone: str) -> dict:
    """Fit on ``splits`` with engine ``p.engine``; write ``user_factors``/``item_factors`` to ``zone``."""
    if p.engine == "spark":
        from jobs import wals as job

        reg = spark_regularization(ctx, p.regularization, splits)
        params = {**dataclasses.asdict(p), "regularization": reg, "splits": list(splits), "zone": zone}
        params.pop("grid")
        return job.run(str(ctx.home), ctx.ds, params, *ctx.spark_args())
    if p.engine != "implicit":
        raise ValueError(f"wals.engine must be 'implicit' or 'spark', got '{p.engine}'")
    umap = common.read_arrow(ctx.home, "user_map", ctx.ds).sort_by("user_idx")
    imap = common.read_arrow(ctx.home, "item_map", ctx.ds).sort_by("item_idx")
    m = count_matrix(common.read_arrow(ctx.home, "sequences", ctx.ds), umap.num_rows, imap.num_rows, splits)
    uf, itf, secs = fit_implicit(m, p)
    users, items = umap.column("user_id").to_pylist(), [""] + imap.column("item_id").to_pylist()
    return {"user_factors": common.write_arrow(_factor_table(users, uf, "user_id", "user_idx", 0), ctx.home,
                                               "user_factors", ctx.ds, zone),
            "item_factors": common.write_arrow(_factor_table(items, itf, "item_id", "item_idx", 1), ctx.home,
                                               "item_factors", ctx.ds, zone),
            "fit_seconds": round(secs, 3)}


def load_factors(ctx: StageContext, zone: str, n_users: int, n_items: int) -> tuple[np.ndarray, np.ndarray]:
    """(U, F) and (N + 1, F) arrays indexed by user_idx / item_idx (row 0 of items and unseen rows are zero)."""
    def dense(table: str, idx: str, rows: int) -> np.ndarray:
        t = common.read_arrow(ctx.home, table, ctx.ds, zone=zone)
        vals = t.column("factors").combine_chunks()
        f = len(vals[0]) if len(vals) else 0
        out = np.zeros((rows, f), np.float32)
        out[t.column(idx).to_numpy()] = np.asarray(vals.values, np.float32).reshape(-1, f)
        return out

    return dense("user_factors", "user_idx", n_users), dense("item_factors", "item_idx", n_items + 1)
