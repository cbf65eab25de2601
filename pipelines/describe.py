"""The ``describe`` stage: an LLM writes a description of every item and every user (GRASP's generation step).

Work per entity: render its versioned prompt from catalogue facts (items) or its train-part history, newest first
(users; valid and test targets never reach a prompt), hash prompt version + model key + messages, and look the
hash up in ``cache/describe.sqlite``. Only misses reach the LLM, in length-sorted batches; results are committed
to the cache batch by batch, so a killed run loses at most one batch and a new ``ds`` generates only for new or
changed entities. Empty or degenerate outputs are retried once with sampling and then flagged
(``status = degenerate``), never stored as if good. Transport failures (server down, too many 429s) are not cached;
above ``describe.max_failed_fraction`` the stage fails, after committing everything that did succeed.
"""
from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from features import schemas, text as T
from jobs import common
from pipelines.cache import Cache
from pipelines.llm import Backend, Generation, describe_key, make_backend


@dataclass(frozen=True)
class Entity:
    kind: str  # item | user
    id: str
    idx: int
    messages: list
    prompt_version: str


def catalogue(ctx) -> tuple[dict[int, dict], dict[int, list[int]], list[str], list[str], np.ndarray, np.ndarray]:
    """Items by ``item_idx``, train histories by ``user_idx`` (oldest first), id lists, popularity and activity."""
    imap = common.read_arrow(ctx.home, "item_map", ctx.ds).sort_by("item_idx")
    umap = common.read_arrow(ctx.home, "user_map", ctx.ds).sort_by("user_idx")
    items = common.read_arrow(ctx.home, "items", ctx.ds).to_pylist()
    by_id = {r["item_id"]: r for r in items}
    item_ids = imap.column("item_id").to_pylist()
    rows = {int(i): by_id.get(iid, {"item_id": iid}) for i, iid in zip(imap.column("item_idx").to_pylist(), item_ids)}
    seq = common.read_arrow(ctx.home, "sequences", ctx.ds, columns=["user_idx", "item_idx", "position", "split"])
    train = seq.filter(pc.equal(seq.column("split"), "train")).sort_by([("user_idx", "ascending"),
                                                                                ("position", "ascending")])
    u = train.column("user_idx").to_numpy()
    it = train.column("item_idx").to_numpy()
    bounds = np.flatnonzero(np.diff(u)) + 1
    hist = {int(uu[0]): ii.tolist() for uu, ii in zip(np.split(u, bounds), np.split(it, bounds)) if len(uu)}
    popularity = np.bincount(it, minlength=imap.num_rows + 1)
    activity = np.bincount(u, minlength=umap.num_rows)
    return rows, hist, item_ids, umap.column("user_id").to_pylist(), popularity, activity


def _chosen(scores: np.ndarray, ids: np.ndarray, limit: int) -> np.ndarray:
    """All ``ids`` (limit 0) or the ``limit`` with the highest score (ties: lower id first), in id order."""
    if not limit or limit >= len(ids):
        return ids
    order = np.lexsort((ids, -scores[ids]))
    return np.sort(ids[order[:limit]])


def entities(ctx) -> tuple[list[Entity], dict]:
    """The entities to describe this ``ds`` and how many were left out by ``max_items``/``max_users``."""
    cfg = ctx.cfg.describe
    rows, hist, item_ids, user_ids, pop, act = catalogue(ctx)
    out, skipped = [], {"items": 0, "users": 0}
    if "items" in cfg.entities:
        idx = _chosen(pop, np.arange(1, len(item_ids) + 1), cfg.max_items)
        skipped["items"] = len(item_ids) - len(idx)
        out += [Entity("item", item_ids[i - 1], int(i), T.item_messages(rows[int(i)]), T.ITEM_PROMPT_VERSION)
                for i in idx]
    if "users" in cfg.entities:
        idx = _chosen(act, np.arange(len(user_ids)), cfg.max_users)
        skipped["users"] = len(user_ids) - len(idx)
        out += [Entity("user", user_ids[u], int(u),
                       T.user_messages([rows[i] for i in hist.get(int(u), [])], cfg.user_history),
                       T.USER_PROMPT_VERSION) for u in idx]
    return out, skipped


def entry_key(e: Entity, model_key: str) -> str:
    return T.content_hash(e.prompt_version, model_key, e.messages)


def _progress(total: int, desc: str):
    from tqdm import tqdm

    # rate and ETA on stderr, refreshed at most every 10 s so Airflow logs stay readable
    return tqdm(total=total, desc=desc, unit="entity", mininterval=10, file=sys.stderr, dynamic_ncols=False)


def generate(backend: Backend, todo: list[Entity], keys: list[str], cache: Cache, flush_every: int) -> dict:
    """Generate ``todo``, committing results to ``cache`` every ``flush_every``; retry degenerate ones once."""
    counts = {"generated": 0, "degenerate": 0, "errors": 0, "retried": 0}
    first_error = None

    def run(batch_idx: list[int], retry: bool) -> list[int]:
        nonlocal first_error
        again, pending = [], {}
        bar = _progress(len(batch_idx), "describe (retry)" if retry else "describe")
        for j, gen in backend.stream([todo[i].messages for i in batch_idx], retry=retry):
            i = batch_idx[j]
            bar.update(1)
            if gen.error:
                counts["errors"] += 1
                first_error = first_error or gen.error
                continue
            reason = T.degenerate_reason(gen.text)
            if reason and not retry:
                again.append(i)
                continue
            pending[keys[i]] = _record(gen, reason)
            counts["degenerate" if reason else "generated"] += 1
            if len(pending) >= flush_every:
                cache.put_many(pending)
                pending = {}
        cache.put_many(pending)
        bar.close()
        return again

    again = run(list(range(len(todo))), retry=False)
    if again:
        counts["retried"] = len(again)
        run(again, retry=True)
    counts["first_error"] = first_error
    return counts


def _record(gen: Generation, reason: str | None) -> bytes:
    text = T.clean_output(gen.text) if reason is None else gen.text
    return json.dumps({"text": text, "tokens": gen.tokens, "status": "degenerate" if reason else "ok",
                       "reason": reason}).encode()


def run(ctx) -> dict:
    cfg = ctx.cfg.describe
    t0 = time.perf_counter()
    todo_all, skipped = entities(ctx)
    model_key = describe_key(cfg)
    keys = [entry_key(e, model_key) for e in todo_all]
    with Cache(ctx.home / "cache" / "describe.sqlite") as cache:
        found = cache.get_many(keys)
        first = {k: i for i, k in reversed(list(enumerate(keys)))}  # identical prompts are generated once
        miss = sorted(i for k, i in first.items() if k not in found)
        print(f"  describe: {len(todo_all)} entities, {len(todo_all) - len(miss)} cached, {len(miss)} to generate "
              f"with {model_key}", flush=True)
        stats, counts = None, {"generated": 0, "degenerate": 0, "errors": 0, "retried": 0, "first_error": None}
        if miss:
            backend = make_backend(cfg, ctx.home, ctx.cfg.seed)
            counts = generate(backend, [todo_all[i] for i in miss], [keys[i] for i in miss], cache,
                              flush_every=max(1, cfg.batch_size))
            stats = backend.stats
        found = cache.get_many(keys)
    recs = [json.loads(found[k]) if k in found else None for k in keys]
    failed = counts["errors"]
    if len(todo_all) and failed / len(todo_all) > cfg.max_failed_fraction:
        raise RuntimeError(
            f"describe: {failed} of {len(todo_all)} generations failed ({counts['first_error']}); the "
            f"{len(todo_all) - failed} that succeeded are cached and will not be generated again. Check that the LLM "
            f"backend ({model_key}) is reachable, then re-run the stage; describe.max_failed_fraction="
            f"{cfg.max_failed_fraction} sets how many failures a run accepts.")
    keep = [(e, k, r) for e, k, r in zip(todo_all, keys, recs) if r is not None]
    tbl = pa.Table.from_pydict({
        "kind": [e.kind for e, _, _ in keep], "id": [e.id for e, _, _ in keep],
        "idx": [e.idx for e, _, _ in keep],
        "prompt_version": [e.prompt_version for e, _, _ in keep], "model": [model_key] * len(keep),
        "input_hash": [k for _, k, _ in keep], "text": [r["text"] for _, _, r in keep],
        "status": [r["status"] for _, _, r in keep], "reason": [r.get("reason") for _, _, r in keep],
        "tokens": [r["tokens"] for _, _, r in keep],
    }, schema=schemas.DESCRIPTIONS)
    common.write_arrow(tbl, ctx.home, "descriptions", ctx.ds)
    degenerate = sum(r["status"] != "ok" for _, _, r in keep)
    out = {"rows_out": tbl.num_rows, "tables": {"descriptions": tbl.num_rows},
           "generated": counts["generated"] + counts["degenerate"], "cached": len(todo_all) - len(miss),
           "failed": failed + degenerate, "degenerate": degenerate,
           "transport_errors": failed, "retried": counts["retried"], "skipped": skipped,
           "llm_calls": stats.calls if stats else 0, "generated_tokens": stats.generated_tokens if stats else 0,
           "tokens_per_s": round(stats.tokens_per_s, 1) if stats else None, "model": model_key,
           "outputs": {"descriptions": str(common.partition_path(ctx.home, "descriptions", ctx.ds))}}
    print(f"  describe: generated {out['generated']}, cached {out['cached']}, failed {out['failed']} "
          f"({degenerate} degenerate, {failed} transport errors), {out['llm_calls']} LLM calls, "
          f"{out['tokens_per_s']} tokens/s, {time.perf_counter() - t0:.1f} s", flush=True)
    return out
