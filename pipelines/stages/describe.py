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
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from features import schemas
from features import text as T
from jobs import warehouse
from pipelines.backends.llm import (
    Backend,
    CTranslate2Backend,
    Generation,
    OpenAIBackend,
    TransformersBackend,
    ctranslate2_key,
    openai_key,
    transformers_key,
)
from pipelines.backends.weights import default_model_dir
from pipelines.cache import Cache
from pipelines.catalogue import load_catalogue
from pipelines.config import DescribeConfig
from pipelines.context import StageContext, StageResult


@dataclass(frozen=True)
class Entity:
    kind: str  # item | user
    id: str
    idx: int
    messages: list
    prompt_version: str


def _chosen(scores: np.ndarray, ids: np.ndarray, limit: int) -> np.ndarray:
    """All ``ids`` (limit 0) or the ``limit`` with the highest score (ties: lower id first), in id order."""
    if not limit or limit >= len(ids):
        return ids
    order = np.lexsort((ids, -scores[ids]))
    return np.sort(ids[order[:limit]])


def entities(ctx: StageContext) -> tuple[list[Entity], dict]:
    """The entities to describe this ``ds`` and how many were left out by ``max_items``/``max_users``."""
    cfg = ctx.cfg.describe
    cat = load_catalogue(ctx)
    out, skipped = [], {"items": 0, "users": 0}
    if "items" in cfg.entities:
        idx = _chosen(cat.popularity, np.arange(1, len(cat.item_ids) + 1), cfg.max_items)
        skipped["items"] = len(cat.item_ids) - len(idx)
        out += [Entity("item", cat.item_ids[i - 1], int(i), T.item_messages(cat.items[int(i)], d=ctx.cfg.domain), T.ITEM_PROMPT_VERSION)
                for i in idx]
    if "users" in cfg.entities:
        idx = _chosen(cat.activity, np.arange(len(cat.user_ids)), cfg.max_users)
        skipped["users"] = len(cat.user_ids) - len(idx)
        out += [Entity("user", cat.user_ids[u], int(u), T.user_messages(cat.history_rows(int(u)), cfg.user_history, d=ctx.cfg.domain),
                       T.USER_PROMPT_VERSION) for u in idx]
    return out, skipped


def resolve_backend(name: str) -> str:
    """``auto``: CTranslate2's CPU kernels where there is no GPU and the package is installed, else transformers."""
    if name != "auto":
        return name
    import importlib.util

    import torch

    if torch.cuda.is_available() or importlib.util.find_spec("ctranslate2") is None:
        return "transformers"
    return "ctranslate2"


def backend_key(cfg: DescribeConfig) -> str:
    """The cache identity of the configured backend and its generation settings, without loading anything."""
    backend = resolve_backend(cfg.backend)
    if backend == "openai":
        return openai_key(cfg.openai.model, cfg.max_new_tokens)
    if backend == "ctranslate2":
        return ctranslate2_key(cfg.model_path, not cfg.model_path, cfg.quantization, cfg.max_new_tokens,
                               cfg.repetition_penalty)
    return transformers_key(cfg.model_path, not cfg.model_path, cfg.max_new_tokens, cfg.repetition_penalty)


def make_backend(cfg: DescribeConfig, home: Path, seed: int = 0) -> Backend:
    """The backend ``describe.backend`` names (the model is loaded on first use, not here)."""
    backend = resolve_backend(cfg.backend)
    if backend == "openai":
        o = cfg.openai
        if not o.model:
            raise ValueError("describe.openai.model is empty: set it to the model name the server serves")
        key = os.environ.get(o.api_key_env) or None
        return OpenAIBackend(o.base_url, o.model, key, o.concurrency, o.timeout_s, o.max_retries, o.backoff_s,
                             o.max_backoff_s, cfg.max_new_tokens, seed)
    model_dir = Path(cfg.model_path) if cfg.model_path else default_model_dir(home)
    if backend == "ctranslate2":
        return CTranslate2Backend(model_dir, backend_key(cfg), home, cfg.batch_size, cfg.max_new_tokens,
                                  cfg.repetition_penalty, cfg.quantization, cfg.threads, seed)
    return TransformersBackend(model_dir, backend_key(cfg), cfg.batch_size, cfg.max_new_tokens,
                               cfg.repetition_penalty, cfg.threads, seed)


def entry_key(e: Entity, model_key: str) -> str:
    return T.content_hash(e.prompt_version, model_key, e.messages)


PROGRESS_EVERY_S = 10.0


def _progress(total: int, desc: str, every: int = 1):
    from pipelines.progress import progress

    # rate and ETA on stderr, refreshed at most every PROGRESS_EVERY_S (Airflow logs stay readable) and only once a
    # whole batch has arrived; no ETA before the first whole batch, so the first is that batch's rate, not one
    # entity's share of it (pipelines.progress)
    return progress(total=total, desc=desc, unit="entity", first=every, every=every, every_s=PROGRESS_EVERY_S)


def generate(backend: Backend, todo: list[Entity], keys: list[str], cache: Cache, flush_every: int,
             max_errors: int | None = None) -> dict:
    """Generate ``todo``, committing results to ``cache`` every ``flush_every`` (and whatever is pending when the
    stream ends or breaks); retry degenerate ones once. Stops sending prompts once more than ``max_errors`` calls
    failed: the run can no longer meet ``describe.max_failed_fraction``."""
    counts = {"generated": 0, "degenerate": 0, "errors": 0, "retried": 0, "not_sent": 0}
    first_error = None

    def run(batch_idx: list[int], retry: bool) -> list[int]:
        nonlocal first_error
        again, pending, seen = [], {}, 0
        load = getattr(backend, "_load", None)
        if load is not None:  # loading (and a first conversion) is not generation: keep it out of the rate
            load()
        bar = _progress(len(batch_idx), "describe (retry)" if retry else "describe", flush_every)
        stream = backend.stream([todo[i].messages for i in batch_idx], retry=retry)
        try:
            for j, gen in stream:
                i = batch_idx[j]
                seen += 1
                bar.update(1)
                if gen.error:
                    counts["errors"] += 1
                    first_error = first_error or gen.error
                    if max_errors is not None and counts["errors"] > max_errors:
                        counts["not_sent"] += len(batch_idx) - seen
                        break
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
        finally:  # every finished result is kept, whatever ends the stream
            stream.close()
            cache.put_many(pending)
            bar.close()
        return again

    again = run(list(range(len(todo))), retry=False)
    if again and not (max_errors is not None and counts["errors"] > max_errors):
        counts["retried"] = len(again)
        run(again, retry=True)
    counts["first_error"] = first_error
    return counts


def _record(gen: Generation, reason: str | None) -> bytes:
    text = T.clean_output(gen.text) if reason is None else gen.text
    return json.dumps({"text": text, "tokens": gen.tokens, "status": "degenerate" if reason else "ok",
                       "reason": reason}).encode()


def run(ctx: StageContext) -> StageResult:
    cfg = ctx.cfg.describe
    t0 = time.perf_counter()
    todo_all, skipped = entities(ctx)
    model_key = backend_key(cfg)
    keys = [entry_key(e, model_key) for e in todo_all]
    with Cache(ctx.home / "cache" / "describe.sqlite") as cache:
        found = cache.get_many(keys)
        first = {k: i for i, k in reversed(list(enumerate(keys)))}  # identical prompts are generated once
        miss = sorted(i for k, i in first.items() if k not in found)
        cached_before = sum(k in found for k in keys)  # entities (duplicates share a prompt, so not len - miss)
        print(f"  describe: {len(todo_all)} entities, {cached_before} cached, {len(miss)} prompts to generate "
              f"with {model_key}", flush=True)
        stats = None
        counts = {"generated": 0, "degenerate": 0, "errors": 0, "retried": 0, "not_sent": 0, "first_error": None}
        max_errors = int(cfg.max_failed_fraction * len(todo_all))
        if miss:
            backend = make_backend(cfg, ctx.home, ctx.cfg.seed)
            counts = generate(backend, [todo_all[i] for i in miss], [keys[i] for i in miss], cache,
                              flush_every=max(1, cfg.batch_size), max_errors=max_errors)
            stats = backend.stats
        found = cache.get_many(keys)
    recs = [json.loads(found[k]) if k in found else None for k in keys]
    failed = counts["errors"]
    if failed > max_errors:
        kept = counts["generated"] + counts["degenerate"]
        stopped = (f"; stopped early, leaving {counts['not_sent']} prompts unanswered, once the run could no longer "
                   "stay within the failures allowed" if counts["not_sent"] else "")
        raise RuntimeError(
            f"describe: {failed} of {len(miss) - counts['not_sent']} prompts answered failed "
            f"({counts['first_error']}){stopped}. "
            f"{kept} generated in this run are cached (with {cached_before} of the {len(todo_all)} "
            f"entities cached before) and will not be generated again. Check that the LLM backend ({model_key}) is "
            f"reachable, then re-run the stage; describe.max_failed_fraction={cfg.max_failed_fraction} sets how many "
            "failures a run accepts.")
    keep = [(e, k, r) for e, k, r in zip(todo_all, keys, recs, strict=True) if r is not None]
    tbl = pa.Table.from_pydict({
        "kind": [e.kind for e, _, _ in keep], "id": [e.id for e, _, _ in keep],
        "idx": [e.idx for e, _, _ in keep],
        "prompt_version": [e.prompt_version for e, _, _ in keep], "model": [model_key] * len(keep),
        "input_hash": [k for _, k, _ in keep], "text": [r["text"] for _, _, r in keep],
        "status": [r["status"] for _, _, r in keep], "reason": [r.get("reason") for _, _, r in keep],
        "tokens": [r["tokens"] for _, _, r in keep],
    }, schema=schemas.DESCRIPTIONS)
    warehouse.write_arrow(tbl, ctx.home, "descriptions", ctx.ds)
    degenerate = sum(r["status"] != "ok" for _, _, r in keep)
    regenerated = {kind: sorted(todo_all[i].id for i in miss if todo_all[i].kind == kind) for kind in ("item", "user")}
    out = {"generated": counts["generated"] + counts["degenerate"], "cached": cached_before,
           "shared_prompt": len(todo_all) - cached_before - len(miss),  # same prompt as another entity: generated once
           "failed": failed + degenerate, "degenerate": degenerate,
           "transport_errors": failed, "retried": counts["retried"], "skipped": skipped,
           "llm_calls": stats.calls if stats else 0, "generated_tokens": stats.generated_tokens if stats else 0,
           "tokens_per_s": round(stats.tokens_per_s, 1) if stats else None, "model": model_key,
           # in either refresh mode: an entity is described again only when its prompt changed (new, or a history
           # that gained items); how many of each kind were regenerated, and the first 50 ids of each
           "refresh": {"recomputed": {k: len(v) for k, v in regenerated.items()},
                       "recomputed_ids": {k: v[:50] for k, v in regenerated.items()}, "reused": cached_before}}
    print(f"  describe: generated {out['generated']}, cached {out['cached']}, failed {out['failed']} "
          f"({degenerate} degenerate, {failed} transport errors), {out['llm_calls']} LLM calls, "
          f"{out['tokens_per_s']} tokens/s, {time.perf_counter() - t0:.1f} s", flush=True)
    return StageResult(tbl.num_rows, {"descriptions": str(warehouse.partition_path(ctx.home, "descriptions", ctx.ds))},
                       tables={"descriptions": tbl.num_rows}, details=out)
