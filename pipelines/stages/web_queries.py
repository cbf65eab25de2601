"""The ``web_queries`` stage: WebRec's search queries made of the LLM's own reasoning.

For each user the recommender needs documents for (per phase, the history before that phase's target:
``pipelines.training.llmrec.retrieval_histories``), the LLM writes a short rationale of what the user needs next
from the history's titles and facts (versioned prompt ``features.text.RATIONALE_PROMPT_VERSION``, greedy); every
generated token is scored by attention x entropy (``pipelines.backends.rationale``, ``features.query_scoring``)
and the top ``web.keywords`` words form the query. Beside it: the naive query (the task sentence + the newest
title) and the newest title alone, the baselines of the query-quality measurement.

Rationales and token scores are cached by a hash of prompt version, model, settings and messages in
``cache/web_queries.sqlite``, committed batch by batch (a killed run resumes; a later day regenerates only users
whose history changed). Writes ``warehouse/queries/ds=<ds>/``. With ``llmrec.retrieval=none`` nothing reads the
queries and the stage does nothing (as ``retrieve``).
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from features import schemas
from features import text as T
from features.query_scoring import keywords, merge_words, naive_query
from jobs import warehouse
from pipelines.backends.weights import default_model_dir
from pipelines.cache import Cache
from pipelines.catalogue import load_catalogue
from pipelines.context import StageContext, StageResult
from pipelines.evaluation.data import evaluation_users, load_eval_data
from pipelines.training.llmrec import retrieval_histories

CHUNK = 64  # rationales per cache commit


def _model_key(model_dir: Path, w) -> str:
    cfg = (model_dir / "config.json").read_text() if (model_dir / "config.json").exists() else str(model_dir)
    return (f"hf:{model_dir.name}:{T.content_hash(cfg)[:12]}:greedy:max_new={w.max_new_tokens}:"
            f"layers={list(w.attention_layers)}")


def run(ctx: StageContext) -> StageResult:
    if ctx.cfg.llmrec.retrieval == "none":
        print("  web_queries: skipped (llmrec.retrieval=none: nothing reads the documents)", flush=True)
        return StageResult(0, details={"skipped": "llmrec.retrieval=none"})
    import torch

    from pipelines.backends.rationale import Rationale, RationaleWriter
    from pipelines.progress import progress

    w = ctx.cfg.web
    if w.threads:
        torch.set_num_threads(w.threads)
    data, user_ids, _ = load_eval_data(ctx)
    cat = load_catalogue(ctx)
    phases = retrieval_histories(data, ctx.cfg, evaluation_users(data, ctx.cfg.eval))
    model_dir = Path(w.model_path) if w.model_path else default_model_dir(ctx.home)
    model_key = _model_key(model_dir, w)
    rows: list[dict] = []
    for phase, (users, prefixes) in phases.items():
        for u, p in zip(users, prefixes, strict=True):
            hist = [cat.items[int(i)] for i in p]
            msgs = T.rationale_messages(hist, d=ctx.cfg.domain)
            rows.append({"user_idx": int(u), "phase": phase, "history_len": len(p), "messages": msgs,
                         "last_title": " ".join((hist[-1].get("title") or "").split()),
                         "key": T.content_hash(T.RATIONALE_PROMPT_VERSION, model_key, msgs)})
    cache = Cache(ctx.home / "cache" / "web_queries.sqlite")
    found = cache.get_many(r["key"] for r in rows)
    todo = list(dict.fromkeys(r["key"] for r in rows if r["key"] not in found))
    by_key = {r["key"]: r for r in rows}
    writer = None
    t0 = time.perf_counter()
    if todo:
        writer = RationaleWriter(model_dir, w.max_new_tokens, w.batch_size, tuple(w.attention_layers))
        bar = progress(total=len(todo), desc="web_queries rationales", unit="user", first=CHUNK, every_s=5)
        for lo in range(0, len(todo), CHUNK):
            keys = todo[lo:lo + CHUNK]
            res = writer([writer.prompt_ids(by_key[k]["messages"]) for k in keys])
            new = {k: json.dumps({"text": r.text, "pieces": r.pieces, "attention": r.attention.tolist(),
                                  "entropy": r.entropy.tolist()}).encode() for k, r in zip(keys, res, strict=True)}
            cache.put_many(new)
            found.update(new)
            bar.update(len(keys))
        bar.close()
    cache.close()
    seconds = time.perf_counter() - t0
    out = {c: [] for c in schemas.QUERIES.names}
    for r in rows:
        v = json.loads(found[r["key"]])
        rat = Rationale(v["text"], v["pieces"], np.asarray(v["attention"]), np.asarray(v["entropy"]))
        words = merge_words(rat.pieces, rat.attention * rat.entropy)
        query = " ".join(keywords(words, w.keywords)) or r["last_title"]
        vals = {"user_id": user_ids[r["user_idx"]], "user_idx": r["user_idx"], "phase": r["phase"],
                "history_len": r["history_len"], "rationale": rat.text, "pieces": rat.pieces,
                "attention": rat.attention.astype(np.float32).tolist(), "entropy": rat.entropy.astype(np.float32)
                .tolist(), "query": query, "naive_query": naive_query(r["last_title"]),
                "last_title": r["last_title"], "prompt_version": T.RATIONALE_PROMPT_VERSION, "model": model_key}
        for c in out:
            out[c].append(vals[c])
    tbl = pa.Table.from_pydict(out, schema=schemas.QUERIES)
    warehouse.write_arrow(tbl, ctx.home, "queries", ctx.ds)
    details = {"users": {p: int(len(u)) for p, (u, _) in phases.items()}, "generated": len(todo),
               "reused": len(rows) - len(todo), "model": model_key}
    if writer is not None and todo:
        details["seconds_per_user"] = {"generate": round(writer.seconds["generate"] / len(todo), 4),
                                       "score": round(writer.seconds["score"] / len(todo), 4),
                                       "total": round(seconds / len(todo), 4)}
        details["tokens_per_s"] = round(writer.tokens / max(writer.seconds["generate"], 1e-9), 1)
    print(f"  web_queries: {len(rows)} queries ({len(todo)} generated, {len(rows) - len(todo)} from the cache)",
          flush=True)
    return StageResult(tbl.num_rows, {"queries": str(warehouse.partition_path(ctx.home, "queries", ctx.ds))},
                       tables={"queries": tbl.num_rows}, details=details)
