"""The evaluation data of one day: ``EvalData`` from the ``sequences`` table, the id lists, the stored negatives."""
from __future__ import annotations

import numpy as np
import pyarrow as pa

from jobs import warehouse
from jobs.split import read_cold
from pipelines.config import Config, EvalConfig
from pipelines.context import StageContext
from pipelines.evaluation.protocol import EvalData, draw_negatives, from_sequences


def load_eval_data(ctx: StageContext) -> tuple[EvalData, list[str], list[str]]:
    """EvalData (with the cold items, when the split held some out) and the id lists (``user_ids[idx]``,
    ``item_ids[idx]`` with ``item_ids[0] = ''``)."""
    umap = warehouse.read_arrow(ctx.home, "user_map", ctx.ds).sort_by("user_idx")
    imap = warehouse.read_arrow(ctx.home, "item_map", ctx.ds).sort_by("item_idx")
    data = from_sequences(warehouse.read_arrow(ctx.home, "sequences", ctx.ds), umap.num_rows, imap.num_rows,
                          read_cold(ctx.home, ctx.ds))
    return data, umap.column("user_id").to_pylist(), [""] + imap.column("item_id").to_pylist()


def negatives_for(ctx: StageContext, data: EvalData) -> np.ndarray:
    """(U, n) stored sampled negatives of ``ds``; drawn once (seeded) and written on first use."""
    path = warehouse.partition_path(ctx.home, "negatives", ctx.ds)
    n, seed = ctx.cfg.eval.n_negatives, ctx.cfg.eval.negatives_seed
    if path.exists():
        t = warehouse.read_arrow(ctx.home, "negatives", ctx.ds).sort_by("user_idx")
        neg = np.asarray(t.column("items").combine_chunks().values, np.int32).reshape(t.num_rows, -1)
        if neg.shape == (data.n_users, n) and (path / "_seed").exists() and (path / "_seed").read_text() == str(seed):
            return neg
    neg = draw_negatives(data, n, seed)
    tbl = pa.table({"user_idx": pa.array(np.arange(data.n_users), pa.int32()),
                    "items": pa.FixedSizeListArray.from_arrays(pa.array(neg.ravel(), pa.int32()), n)
                    .cast(pa.list_(pa.int32()))})
    warehouse.write_arrow(tbl, ctx.home, "negatives", ctx.ds)
    (path / "_seed").write_text(str(seed))
    return neg


def evaluation_users(data: EvalData, e: EvalConfig) -> np.ndarray:
    """The users every model is scored on: all users with a test target, or a seeded subset of ``eval.users`` of
    them (sorted), the same for every model of the run."""
    users = np.flatnonzero(data.test > 0)
    if not e.users or e.users >= len(users):
        return users
    return np.sort(np.random.default_rng(e.users_seed).choice(users, e.users, replace=False))


def eval_kwargs(cfg: Config) -> dict:
    """The protocol settings of ``eval`` as keyword arguments of ``pipelines.evaluation.protocol.evaluate``."""
    e = cfg.eval
    return dict(ks=tuple(e.ks), batch=e.batch_size, short_quantile=e.short_quantile, tail_fraction=e.tail_fraction,
                candidates=tuple(e.candidates))
