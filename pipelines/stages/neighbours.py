"""Stage (pipelines layer): ``neighbours``, the top-k most similar items per item and users per user (text cosine).

One block per (kind, source) of ``text_embeddings``; ``neighbours.engine`` picks the exact blocked matmul (default)
or FAISS (``neighbours.faiss_index``). Output ``neighbours``: one row per (entity, rank), self excluded.
"""
from __future__ import annotations

import time

import numpy as np
import pyarrow as pa

from features import schemas
from features.embeddings import vectors_of
from features.neighbours import exact_topk, faiss_topk
from jobs import warehouse
from pipelines import refresh
from pipelines.context import StageContext, StageResult


def run(ctx: StageContext) -> StageResult:
    cfg = ctx.cfg.neighbours
    plan = refresh.plan(ctx)
    emb = warehouse.read_arrow(ctx.home, "text_embeddings", ctx.ds)
    parts, seconds = [], {}
    for source in sorted(set(emb.column("source").to_pylist())):
        for kind in ("item", "user"):
            vec, idx, ids = vectors_of(emb, kind, source)
            if len(idx) < 2:
                continue
            t0 = time.perf_counter()
            nb, score = (exact_topk(vec, cfg.k, cfg.block_size) if cfg.engine == "exact"
                         else faiss_topk(vec, cfg.k, cfg.faiss_index))
            seconds[f"{kind}/{source}"] = round(time.perf_counter() - t0, 3)
            n, k = nb.shape
            ids_arr = np.asarray(ids, dtype=object)
            parts.append(pa.Table.from_pydict({
                "kind": [kind] * (n * k), "source": [source] * (n * k),
                "idx": np.repeat(idx, k).astype(np.int32), "id": np.repeat(ids_arr, k).tolist(),
                "rank": np.tile(np.arange(k, dtype=np.int16), n),
                "neighbour_idx": idx[nb.ravel()].astype(np.int32), "neighbour_id": ids_arr[nb.ravel()].tolist(),
                "score": score.ravel(),
            }, schema=schemas.NEIGHBOURS))
    if not parts:
        raise ValueError(f"text_embeddings of ds={ctx.ds} has fewer than two vectors per kind: nothing to compare")
    tbl = pa.concat_tables(parts)
    warehouse.write_arrow(tbl, ctx.home, "neighbours", ctx.ds)
    print(f"  neighbours: top-{cfg.k} by cosine ({cfg.engine}) for "
          + ", ".join(f"{b} in {s} s" for b, s in seconds.items()), flush=True)
    return StageResult(tbl.num_rows, {"neighbours": str(warehouse.partition_path(ctx.home, "neighbours", ctx.ds))},
                       tables={"neighbours": tbl.num_rows},
                       details={"k": cfg.k, "engine": cfg.engine, "seconds_by_block": seconds,
                                "refresh": {"mode": plan.mode, "recomputed": "all", "rows": tbl.num_rows,
                                            "why": f"a full recompute took {sum(seconds.values()):.2f} s; an exact "
                                                   "partial update must still score every entity against the new "
                                                   "and changed ones, for no saving worth its bookkeeping"}})
