"""The ``retrieve`` stage: the documents behind each query of ``web_queries``, sanitised for a prompt.

Backends (``pipelines/backends/search.py``): ``local`` (default) is bm25s over the catalogue's item documents
(``doc_id = item:<item_id>``: catalogue facts plus the LLM description where ``describe`` wrote a good one) and the
``web.corpus`` files; ``tavily`` and ``brave`` call those APIs (key from ``web.<backend>.api_key_env``; answers
cached by query hash). Every hit is sanitised (``features.sanitise``: markup out, instruction-like lines out and
counted, capped at ``web.doc_chars``) before it is stored. The top ``web.docs`` hits of each user's query go to
``warehouse/retrieved/ds=<ds>/``.

With the local backend the stage also measures the queries: recall@10 of the target item's own document among the
documents retrieved for the attention x entropy query, the naive query and the newest title alone, per phase
(``valid`` is the figure to choose by; ``test`` is reported, never tuned on).
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from features import schemas
from features import text as T
from features.sanitise import sanitise
from jobs import warehouse
from pipelines.backends.search import WEB_BACKENDS, LocalBM25, corpus_hash, read_corpus
from pipelines.catalogue import load_catalogue
from pipelines.context import StageContext, StageResult
from pipelines.evaluation.data import load_eval_data

QUERY_KINDS = {"attention_entropy": "query", "naive": "naive_query", "last_title": "last_title"}
RECALL_K = 10


def item_documents(ctx: StageContext) -> list[dict]:
    """One document per catalogue item: its facts, and its LLM description when ``describe`` wrote a good one."""
    cat = load_catalogue(ctx)
    desc: dict[int, str] = {}
    if warehouse.partition_path(ctx.home, "descriptions", ctx.ds).exists():
        d = warehouse.read_arrow(ctx.home, "descriptions", ctx.ds, columns=["kind", "idx", "text", "status"])
        for kind, idx, text, status in zip(*(d.column(c).to_pylist() for c in ("kind", "idx", "text", "status")),
                                           strict=True):
            if kind == "item" and status == "ok":
                desc[int(idx)] = text
    return [{"doc_id": f"item:{iid}", "url": "", "title": " ".join((cat.items[i].get("title") or "").split()),
             "text": T.document_text(cat.items[i], desc.get(i), ctx.cfg.domain)} for i, iid in enumerate(cat.item_ids, 1)]


def backend_for(ctx: StageContext):
    w = ctx.cfg.web
    if w.backend == "local":
        docs = item_documents(ctx)
        for f in w.corpus:
            docs += read_corpus(Path(f))
        return LocalBM25(docs, ctx.home / "cache" / "bm25" / corpus_hash(docs))
    api = getattr(w, w.backend)
    return WEB_BACKENDS[w.backend](os.environ.get(api.api_key_env, ""), ctx.home / "cache" / "search.sqlite",
                                   api.base_url, api.requests_per_second, api.timeout_s, api.max_retries,
                                   api.backoff_s, api.max_backoff_s)


def run(ctx: StageContext) -> StageResult:
    if ctx.cfg.llmrec.retrieval == "none":
        print("  retrieve: skipped (llmrec.retrieval=none: nothing reads the documents)", flush=True)
        return StageResult(0, details={"skipped": "llmrec.retrieval=none"})
    w = ctx.cfg.web
    if not warehouse.partition_path(ctx.home, "queries", ctx.ds).exists():
        raise FileNotFoundError(f"retrieve needs the queries of ds={ctx.ds}: run the 'web_queries' stage first "
                                f"(recpipe run --ds {ctx.ds} --stages web_queries)")
    q = warehouse.read_arrow(ctx.home, "queries", ctx.ds).to_pylist()
    t0 = time.perf_counter()
    backend = backend_for(ctx)
    t_index = time.perf_counter() - t0
    t1 = time.perf_counter()
    hits = backend.search([r["query"] for r in q], w.docs)
    t_search = time.perf_counter() - t1
    out = {c: [] for c in schemas.RETRIEVED.names}
    removed_docs = removed_lines = 0
    for r, hs in zip(q, hits, strict=True):
        for rank, h in enumerate(hs[: w.docs]):
            clean = sanitise(h.text, w.doc_chars)
            title = sanitise(h.title, 200)
            n_removed = clean.removed_lines + title.removed_lines
            removed_lines += n_removed
            removed_docs += n_removed > 0
            vals = {"user_id": r["user_id"], "user_idx": r["user_idx"], "phase": r["phase"], "rank": rank,
                    "doc_id": h.doc_id, "url": h.url, "title": title.text, "text": clean.text, "score": h.score,
                    "removed_lines": n_removed, "backend": backend.name}
            for c in out:
                out[c].append(vals[c])
    tbl = pa.Table.from_pydict(out, schema=schemas.RETRIEVED)
    warehouse.write_arrow(tbl, ctx.home, "retrieved", ctx.ds)
    details: dict = {"backend": backend.name, "queries": len(q), "documents": tbl.num_rows,
                     "sanitised": {"documents_with_removed_lines": int(removed_docs),
                                   "removed_lines": int(removed_lines)},
                     "seconds_per_query": round(t_search / max(len(q), 1), 5), "index_seconds": round(t_index, 2)}
    if isinstance(backend, LocalBM25):
        details["index_reused"] = backend.reused
        details["query_recall@10"] = query_recall(ctx, backend, q)
    else:
        details["api"] = dict(backend.stats)
    print(f"  retrieve: {tbl.num_rows} documents for {len(q)} queries ({backend.name}); "
          f"{removed_lines} instruction-like lines removed from {removed_docs} documents", flush=True)
    return StageResult(tbl.num_rows, {"retrieved": str(warehouse.partition_path(ctx.home, "retrieved", ctx.ds))},
                       tables={"retrieved": tbl.num_rows}, details=details)


def query_recall(ctx: StageContext, backend: LocalBM25, q: list[dict]) -> dict:
    """``{phase: {kind: recall@10 of the target item's document, "users": n}}`` for the valid and test phases."""
    data, _, item_ids = load_eval_data(ctx)
    out = {}
    for phase in ("valid", "test"):
        rows = [r for r in q if r["phase"] == phase]
        targets = data.targets(phase)
        want = [f"item:{item_ids[targets[r['user_idx']]]}" for r in rows]
        if not rows:
            continue
        res = {"users": len(rows)}
        for kind, col in QUERY_KINDS.items():
            found = backend.search([r[col] for r in rows], RECALL_K)
            res[kind] = round(float(np.mean([t in {h.doc_id for h in hs} for t, hs in zip(want, found, strict=True)])),
                              4)
        out[phase] = res
    return out
