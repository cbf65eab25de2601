"""Backend (pipelines/backends): weighted ALS on two engines, and the factor tables they write and read.

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
from jobs import warehouse
from jobs.split import read_cold
from pipelines.config import WalsConfig
from pipelines.context import StageContext

SCRATCH = "scratch"  # zone of the train-only fit used for valid metrics and tuning


def fit_implicit(m, p: WalsConfig, init: tuple[np.ndarray, np.ndarray] | None = None,
                 iterations: int | None = None) -> tuple[np.ndarray, np.ndarray, float]:
    """(U, F) user and (N + 1, F) item factors from a (U, N + 1) count matrix; returns fit seconds too. ``init``:
    starting factors (a warm start), swept ``iterations`` times instead of ``p.iterations``."""
    from implicit.cpu.als import AlternatingLeastSquares
    from threadpoolctl import threadpool_limits

    conf = m.copy()
    conf.data = 1.0 + p.alpha * conf.data                                 # c_ui = 1 + alpha * count
    with threadpool_limits(1, "blas"):  # implicit checks BLAS threads when constructed, so build it inside
        model = AlternatingLeastSquares(factors=p.factors, regularization=p.regularization, alpha=1.0,
                                        iterations=iterations or p.iterations, random_state=p.fit_seed,
                                        num_threads=p.threads, calculate_training_loss=False)
        if init is not None:  # implicit starts from factors already set
            model.user_factors, model.item_factors = (np.ascontiguousarray(a, np.float32) for a in init)
        t0 = time.perf_counter()
        model.fit(conf.tocsr(), show_progress=False)
    return np.asarray(model.user_factors), np.asarray(model.item_factors), time.perf_counter() - t0


def _factor_table(ids: list[str], vecs: np.ndarray, id_col: str, idx_col: str, start: int) -> pa.Table:
    n, f = vecs.shape[0] - start, vecs.shape[1]
    flat = pa.array(np.ascontiguousarray(vecs[start:], np.float32).ravel(), pa.float32())
    return pa.table({id_col: pa.array(ids[start:], pa.string()),
                     idx_col: pa.array(np.arange(start, start + n), pa.int32()),
                     "factors": pa.FixedSizeListArray.from_arrays(flat, f).cast(pa.list_(pa.float32()))})


def training_matrix(ctx: StageContext, splits: tuple[str, ...], n_users: int, n_items: int):
    """(U, N + 1) counts of the ``splits`` of ``sequences`` that a fit may see: never a cold item's (with the split's
    cold-item protocol a cold-valid target is a valid row, and a train + valid refit must not learn it)."""
    cold = read_cold(ctx.home, ctx.ds)
    return count_matrix(warehouse.read_arrow(ctx.home, "sequences", ctx.ds), n_users, n_items, splits,
                        None if cold is None else cold.column("item_idx").combine_chunks())


def spark_regularization(ctx: StageContext, reg: float, splits: tuple[str, ...]) -> float:
    """Spark's regParam for implicit's penalty ``reg``: divided by the mean interactions per user (ALS-WR)."""
    seq = warehouse.read_arrow(ctx.home, "sequences", ctx.ds, columns=["user_idx", "item_idx", "split"])
    rows = np.isin(seq.column("split").to_numpy(zero_copy_only=False), splits)
    cold = read_cold(ctx.home, ctx.ds)
    if cold is not None:  # the job leaves the cold items' rows out: count the rows it fits
        rows &= ~np.isin(seq.column("item_idx").to_numpy(), cold.column("item_idx").to_numpy())
    n = int(rows.sum())
    n_users = len(np.unique(seq.column("user_idx").to_numpy()))
    return reg / max(n / n_users, 1.0)


def warm_init(ctx: StageContext, base: str, zone: str, users: list[str], items: list[str],
              p: WalsConfig) -> tuple[tuple[np.ndarray, np.ndarray] | None, dict]:
    """Starting factors from day ``base``'s fit in ``zone``, matched by id; users and items that are new start as
    implicit's cold start does (uniform * 0.01, seeded), and so do the items the split holds out today (``cold_items``:
    an item fitted on ``base`` must not bring its fitted row back). None when that day has no such fit or another
    size."""
    from pipelines.refresh import rows_by_id, uncarried_cold

    cold = read_cold(ctx.home, ctx.ds)
    if cold is not None:
        flags = np.zeros(len(items), bool)
        flags[cold.column("item_idx").to_numpy()] = True
        items = uncarried_cold(items, flags)
    try:
        prev = {t: warehouse.read_arrow(ctx.home, t, base, zone=zone) for t in ("user_factors", "item_factors")}
    except FileNotFoundError:
        return None, {"warm": False, "reason": f"no {zone} factors of {base}"}
    dims = {len(prev[t].column("factors")[0]) for t in prev if prev[t].num_rows}
    if dims != {p.factors}:
        return None, {"warm": False, "reason": f"{base}'s factors have {sorted(dims)} dimensions, not {p.factors}"}
    rng = np.random.default_rng(p.fit_seed)
    out, info = [], {"warm": True, "base": base}
    for table, ids, id_col in (("user_factors", users, "user_id"), ("item_factors", items, "item_id")):
        t = prev[table]
        rows = np.asarray(t.column("factors").combine_chunks().values, np.float32).reshape(-1, p.factors)
        fresh = (rng.random((len(ids), p.factors)) * 0.01).astype(np.float32)
        warm, carried = rows_by_id(t.column(id_col).to_pylist(), rows, ids, fresh)
        out.append(warm)
        kind = table.split("_")[0] + "s"
        info[f"{kind}_carried"], info[f"{kind}_new"] = carried, len(ids) - carried - (kind == "items")
    return (out[0], out[1]), info


def fit(ctx: StageContext, p: WalsConfig, splits: tuple[str, ...], zone: str, base: str | None = None,
        warm_iterations: int | None = None) -> dict:
    """Fit on ``splits`` with engine ``p.engine``; write ``user_factors``/``item_factors`` to ``zone``. ``base``: a
    day whose factors (same zone) start the fit, swept ``warm_iterations`` times (implicit engine; Spark's ALS
    takes no starting factors, so it always fits cold)."""
    if p.engine == "spark":
        from jobs import wals as job

        reg = spark_regularization(ctx, p.regularization, splits)
        params = {**dataclasses.asdict(p), "regularization": reg, "splits": list(splits), "zone": zone}
        params.pop("grid")
        res = job.run(str(ctx.home), ctx.ds, params, *ctx.spark_args())
        return {**res, "refresh": {"warm": False, "reason": "Spark's ALS takes no starting factors: a full fit"}
                if base else {"warm": False}}
    if p.engine != "implicit":
        raise ValueError(f"wals.engine must be 'implicit' or 'spark', got '{p.engine}'")
    umap = warehouse.read_arrow(ctx.home, "user_map", ctx.ds).sort_by("user_idx")
    imap = warehouse.read_arrow(ctx.home, "item_map", ctx.ds).sort_by("item_idx")
    m = training_matrix(ctx, splits, umap.num_rows, imap.num_rows)
    users, items = umap.column("user_id").to_pylist(), [""] + imap.column("item_id").to_pylist()
    init, warm = warm_init(ctx, base, zone, users, items, p) if base else (None, {"warm": False})
    uf, itf, secs = fit_implicit(m, p, init, warm_iterations if init is not None else None)
    warm["iterations"] = warm_iterations if init is not None else p.iterations
    return {"user_factors": warehouse.write_arrow(_factor_table(users, uf, "user_id", "user_idx", 0), ctx.home,
                                               "user_factors", ctx.ds, zone),
            "item_factors": warehouse.write_arrow(_factor_table(items, itf, "item_id", "item_idx", 1), ctx.home,
                                               "item_factors", ctx.ds, zone),
            "fit_seconds": round(secs, 3), "refresh": warm}


def load_factors(ctx: StageContext, zone: str, n_users: int, n_items: int) -> tuple[np.ndarray, np.ndarray]:
    """(U, F) and (N + 1, F) arrays indexed by user_idx / item_idx (row 0 of items and unseen rows are zero)."""
    def dense(table: str, idx: str, rows: int) -> np.ndarray:
        t = warehouse.read_arrow(ctx.home, table, ctx.ds, zone=zone)
        vals = t.column("factors").combine_chunks()
        f = len(vals[0]) if len(vals) else 0
        out = np.zeros((rows, f), np.float32)
        out[t.column(idx).to_numpy()] = np.asarray(vals.values, np.float32).reshape(-1, f)
        return out

    return dense("user_factors", "user_idx", n_users), dense("item_factors", "item_idx", n_items + 1)
