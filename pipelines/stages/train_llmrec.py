"""The ``train_llmrec`` stage: the LLM recommender (``models.llmrec``) trained in two stages, scored for the shared
evaluation, and a reason generated for sampled users' top item.

Reads ``sequences``, ``text_embeddings`` (``llmrec.text_source``) and the ``items`` catalogue, and fits its own
WALS item factors (``wals.*`` settings, implicit engine) on the train part without the training users' last
``examples_per_user`` items, its training targets (``pipelines.training.llmrec``); one factor space serves
training, validation and test, and user tokens are folded in from the items before each target. Writes
``runs/<ds>/train_llmrec/llmrec/`` (``vectors.npz`` as the sequential models do, ``result.json`` with both
stages' histories) and ``warehouse/reasons/ds=<ds>/``.

Stage 1 trains the projectors and the head with the backbone frozen; stage 2 (``llmrec.lora``) adds LoRA adapters
and trains them with projectors and head. Each stage checkpoints its trainable weights only, under
``checkpoints/train_llmrec/<ds>/stage{1,2}-<key>/``; a re-run resumes. Users scored: the evaluation's users
(``eval.users``: all, or a seeded subset); others get the mean scored user (as an unknown user is served).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from features import schemas
from features import text as T
from features.embeddings import vectors_of
from jobs import warehouse
from models.llmrec import LLMRec
from pipelines import refresh
from pipelines.backends.llm import TransformersBackend
from pipelines.backends.weights import default_model_dir
from pipelines.catalogue import Catalogue, load_catalogue
from pipelines.context import StageContext, StageResult
from pipelines.evaluation.data import evaluation_users, load_eval_data
from pipelines.training.distributed import init_distributed
from pipelines.training.llmrec import (
    FoldIn,
    LLMRecTask,
    Prompts,
    calibrate_scale,
    code_version,
    held_out_factors,
    llmrec_users,
    phase_examples,
    seeded_users,
    train_examples,
)
from pipelines.training.loop import FitResult, damage, fit

STAGE, MODEL = "train_llmrec", "llmrec"


def _fingerprint(*parts) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p.tobytes() if isinstance(p, np.ndarray) else json.dumps(p, sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


def item_text(ctx: StageContext, n_items: int) -> np.ndarray:
    """(N + 1, Dt) item text embeddings of ``llmrec.text_source`` (zero rows for items without one)."""
    source = ctx.cfg.llmrec.text_source
    if not warehouse.partition_path(ctx.home, "text_embeddings", ctx.ds).exists():
        raise FileNotFoundError(f"the LLM recommender needs the text_embeddings of ds={ctx.ds}: run the 'embed' stage "
                                f"first (recpipe run --ds {ctx.ds} --until embed)")
    emb = warehouse.read_arrow(ctx.home, "text_embeddings", ctx.ds)
    vec, idx, _ = vectors_of(emb, "item", source)
    if len(idx) == 0:
        raise ValueError(f"text_embeddings of ds={ctx.ds} has no item vectors from source '{source}': add it to "
                         "embed.sources and re-run embed, or set llmrec.text_source")
    text = np.zeros((n_items + 1, vec.shape[1]), np.float32)
    text[idx] = vec
    return text


def init_from(c, module: LLMRec) -> str:
    """Start ``module`` from a trained recommender's weights (``llmrec.init_from``: its ``best.pt`` or the checkpoint
    directory holding it; ``LLMRec.load_trained``: projectors, head and, when the file has them, LoRA adapters, so
    stage 1 starts from the adapted model). Returns the file's content hash."""
    path = Path(c.init_from)
    path = path / "best.pt" if path.is_dir() else path
    if not path.is_file():
        raise FileNotFoundError(f"llmrec.init_from={c.init_from}: no best.pt there; point it at a trained llmrec's "
                                "checkpoint directory (checkpoints/train_llmrec/<ds>/stage2-<key>/) or its best.pt")
    why = damage(path)
    if why:
        raise ValueError(f"llmrec.init_from={c.init_from}: {path} is damaged ({why}); point llmrec.init_from at an "
                         "intact best.pt (an earlier day's checkpoints/train_llmrec/<ds>/stage2-<key>/) or unset it")
    state = torch.load(path, map_location="cpu")
    try:
        lora = module.load_trained(state)
    except ValueError as e:
        raise ValueError(f"llmrec.init_from={c.init_from} holds {e}") from None
    print(f"  llmrec: started from {path} ({len(state)} tensors{', LoRA included' if lora else ''})", flush=True)
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def retrieved_texts(ctx: StageContext) -> dict[str, dict[int, list[str]]]:
    """``{phase: {user_idx: [document text, ...] best first}}`` from the ``retrieved`` table of ``ds``."""
    if not warehouse.partition_path(ctx.home, "retrieved", ctx.ds).exists():
        raise FileNotFoundError(f"llmrec.retrieval={ctx.cfg.llmrec.retrieval} needs the retrieved documents of "
                                f"ds={ctx.ds}: run web_queries and retrieve first (recpipe run --ds {ctx.ds} --stages "
                                "web_queries,retrieve), or set llmrec.retrieval=none")
    t = warehouse.read_arrow(ctx.home, "retrieved", ctx.ds, columns=["user_idx", "phase", "rank", "title", "text"])
    out: dict[str, dict[int, list[tuple[int, str]]]] = {}
    for u, ph, rank, title, text in zip(*(t.column(c).to_pylist() for c in ("user_idx", "phase", "rank", "title",
                                                                            "text")), strict=True):
        out.setdefault(ph, {}).setdefault(int(u), []).append((rank, text if title in text else
                                                              f"{title}: {text}"))
    return {ph: {u: [x for _, x in sorted(v)] for u, v in users.items()} for ph, users in out.items()}


STAGE2_ONLY = ("stage2", "lora", "lora_r", "lora_alpha", "lora_dropout", "lora_targets")
NOT_TRAINING = ("reasons_users", "reason_max_new_tokens", "rerank_from", "rerank_k", "rerank_mix", "eval_batch",
                "stage1", "stage2", "distributed", "init_from")  # init_from: its file's content hash is in the key


def stage_settings(ctx: StageContext, ident: str, world: int, stage: int) -> dict:
    """What changes what stage ``stage`` learns (stage 2 also depends on stage 1's key): more epochs or patience
    resume, threads change nothing, and stage 2's settings do not retrain stage 1."""
    c = ctx.cfg.llmrec
    if stage == 2:
        return {k: v for k, v in dataclasses.asdict(c).items() if k in STAGE2_ONLY and k != "stage2"} | {
            "train": _loop_settings(c.stage2)}
    model = {k: v for k, v in dataclasses.asdict(c).items() if k not in NOT_TRAINING + STAGE2_ONLY}
    dist = {k: v for k, v in dataclasses.asdict(c.distributed).items() if k != "threads"}
    out = {"llmrec": model, "train": _loop_settings(c.stage1), "distributed": dist, "backbone": ident,
           "code": code_version(), "seed": ctx.cfg.seed}
    return out | ({"world_size": world} if world > 1 else {})


def _loop_settings(t) -> dict:
    return {k: v for k, v in dataclasses.asdict(t).items() if k not in ("epochs", "patience", "min_epochs")}


def _fit_stage(ctx: StageContext, module: LLMRec, task: LLMRecTask, stage: int, key: str, world: int) -> FitResult:
    c = ctx.cfg.llmrec
    ckpt = ctx.home / "checkpoints" / STAGE / ctx.ds / f"stage{stage}-{key}"
    n = sum(p.numel() for p in module.parameters() if p.requires_grad)
    if int(torch.distributed.get_rank()) == 0:
        print(f"  llmrec stage {stage}: {n:,} trainable parameters, {len(task.train)} examples, {world} process(es), "
              f"checkpoints in {ckpt}", flush=True)
    return fit(module, task, c.stage1 if stage == 1 else c.stage2, c.distributed, ctx.cfg.seed, ckpt,
               f"llmrec stage {stage}", "llmrec")


def warm_context(ctx: StageContext) -> tuple[StageContext, dict]:
    """An incremental day: the context with ``llmrec.init_from`` set to the base day's final weights (projectors,
    head, LoRA) and each stage's epochs capped at ``refresh.finetune_epochs``; otherwise ``ctx`` as it is. The
    recommender has no item-indexed weights (items are scored through their WALS factors and texts), so new items
    need no rows. Returns the record of what was done."""
    plan, c = refresh.plan(ctx), ctx.cfg.llmrec
    rec = {"mode": plan.mode, "reason": plan.reason, "warm": False}
    if not plan.incremental:
        return ctx, rec
    if c.init_from:
        return ctx, {**rec, "why_not": "llmrec.init_from is set: it decides where training starts"}
    prev_path = ctx.home / "runs" / plan.base / STAGE / MODEL / "result.json"
    if not prev_path.exists():
        return ctx, {**rec, "why_not": f"{plan.base} trained no {MODEL}"}
    prev = json.loads(prev_path.read_text())
    last = 2 if "stage2" in prev.get("stages", {}) else 1
    best = ctx.home / "checkpoints" / STAGE / plan.base / f"stage{last}-{prev['model_key']}" / "best.pt"
    if not best.exists():
        return ctx, {**rec, "why_not": f"{best} is gone"}
    why = damage(best)
    if why:  # cut short: the day trains from scratch instead of failing on it every night
        print(f"  WARNING: {MODEL}: {plan.base}'s weights {best} are damaged ({why}); training from scratch",
              flush=True)
        return ctx, {**rec, "why_not": f"{best} is damaged ({why})"}
    e = ctx.cfg.refresh.finetune_epochs
    warm = dataclasses.replace(c, init_from=str(best),
                               stage1=dataclasses.replace(c.stage1, epochs=min(c.stage1.epochs, e)),
                               stage2=dataclasses.replace(c.stage2, epochs=min(c.stage2.epochs, e)))
    return (dataclasses.replace(ctx, cfg=dataclasses.replace(ctx.cfg, llmrec=warm)),
            {**rec, "warm": True, "base": plan.base, "from": str(best),
             "epochs": {"stage1": warm.stage1.epochs, "stage2": warm.stage2.epochs}})


def run(ctx: StageContext) -> StageResult:
    ctx, warm = warm_context(ctx)
    c = ctx.cfg.llmrec
    if c.distributed.threads:
        torch.set_num_threads(c.distributed.threads)
    t0 = time.perf_counter()
    data, _, _ = load_eval_data(ctx)
    text = item_text(ctx, data.n_items)
    train_users, valid_users = llmrec_users(data, c, ctx.cfg.seed)
    factors = held_out_factors(data.train, data.n_items, train_users, c.examples_per_user,
                               dataclasses.replace(ctx.cfg.wals, engine="implicit"))
    cat = load_catalogue(ctx)
    model_dir = Path(c.model_path) if c.model_path else default_model_dir(ctx.home)
    torch.manual_seed(ctx.cfg.seed)
    module = LLMRec.from_pretrained(c, model_dir, torch.from_numpy(factors), torch.from_numpy(text))
    tok, ident = module.pretrained.tokenizer, module.pretrained.ident
    prompts = Prompts(tok, [""] + [cat.items[i].get("title") or "" for i in range(1, data.n_items + 1)], c,
                      ctx.cfg.domain)
    foldin = FoldIn(factors, ctx.cfg.wals.regularization, ctx.cfg.wals.alpha)
    train = train_examples(data.train, train_users, c.examples_per_user)
    valid = phase_examples(data, valid_users, "valid")
    docs = retrieved_texts(ctx) if c.retrieval != "none" else {}
    if docs:
        train.with_docs(prompts, docs.get("train", {}))
        valid.with_docs(prompts, docs.get("valid", {}))
    task = LLMRecTask(prompts, foldin, train, valid, data, c.stage1.batch_size, c.loss, c.negatives, c.align_weight,
                      c.align_temperature, c.eval_batch)
    rank, world = init_distributed(c.distributed.dist_backend)
    init = init_from(c, module) if c.init_from else ""
    key1 = _fingerprint(stage_settings(ctx, ident, world, 1), data.train.indptr, data.train.indices, data.valid,
                        factors, text, train.targets, valid.users, [d and d[0] for d in train.docs or []],
                        [d and d[0] for d in valid.docs or []], init)
    scale = round(calibrate_scale(module, task), 4) if c.soft_tokens and c.user_skip and not init else None
    results = {"stage1": _fit_stage(ctx, module, task, 1, key1, world).summary()}
    key = key1
    if c.lora:
        module.add_lora()
        task.batch_size = c.stage2.batch_size
        key = _fingerprint(key1, stage_settings(ctx, ident, world, 2))
        results["stage2"] = _fit_stage(ctx, module, task, 2, key, world).summary()
    out: dict = {"stages": {s: {k: v for k, v in r.items() if k != "history"} for s, r in results.items()},
                 "backbone": ident, "train_examples": len(train), "valid_users": len(valid),
                 "model_key": key, "start_scale": scale, "refresh": warm}
    outputs = {}
    if rank == 0:
        d = ctx.model_dir(STAGE, MODEL)
        d.mkdir(parents=True, exist_ok=True)
        scored = evaluation_users(data, ctx.cfg.eval)
        device = "cpu" if c.distributed.device == "cpu" else next(module.parameters()).device
        t_score = time.perf_counter()
        vectors = _score(module, task, data, scored, device, docs, prompts)
        out["score_seconds_per_user"] = round((time.perf_counter() - t_score) / max(2 * len(scored), 1), 5)
        tmp = d / "vectors.tmp.npz"
        np.savez(tmp, **vectors)
        tmp.replace(d / "vectors.npz")
        out["scored_users"] = int(len(scored))
        if c.reasons_users:
            out["reasons"] = _reasons(ctx, module, vectors, data, cat, scored, key)
        out["seconds"] = round(time.perf_counter() - t0, 2)
        warehouse.write_json(d / "result.json", {**out, "history": {s: r["history"] for s, r in results.items()}})
        outputs[MODEL] = str(d)
        best = results.get("stage2", results["stage1"])
        print(f"  llmrec: best valid NDCG@10 {best['best_valid_NDCG@10']:.4f} (stage {len(results)}), "
              f"{best['examples_per_s']} examples/s", flush=True)
    return StageResult(len(results), outputs, details=out)


def _score(module: LLMRec, task: LLMRecTask, data, scored: np.ndarray, device, docs: dict,
           prompts: Prompts) -> dict[str, np.ndarray]:
    """``user_valid``/``user_test`` (U, d) query vectors of the scored users (others: their mean) and ``items``;
    ``docs``: each phase's retrieved documents per user (``retrieved_texts``)."""
    out = {}
    for phase in ("valid", "test"):
        ex = phase_examples(data, scored, phase)
        if docs:
            ex.with_docs(prompts, docs.get(phase, {}))
        q = task.queries(module, ex, device)
        users = np.tile(q.mean(0) if len(q) else np.zeros(q.shape[1], np.float32), (data.n_users, 1))
        users[ex.users] = q
        out[f"user_{phase}"] = users.astype(np.float32)
        print(f"  llmrec: scored {len(ex)} users ({phase})", flush=True)
    with torch.no_grad():
        out["items"] = module.item_table().float().cpu().numpy()
    out["scored"] = np.isin(np.arange(data.n_users), scored)
    return out


def _reasons(ctx: StageContext, module: LLMRec, vectors: dict, data, cat: Catalogue, scored: np.ndarray,
             model_key: str) -> dict:
    """Top item of ``reasons_users`` seeded scored users, a reason for each from facts only, groundedness."""
    c = ctx.cfg.llmrec
    users = seeded_users(scored, c.reasons_users, ctx.cfg.seed + 2)
    hist = data.history("test")
    s = vectors["user_test"][users] @ vectors["items"].T                        # (R, N + 1)
    s[:, 0] = -np.inf
    s[hist.rows(users)] = -np.inf                                               # as served: no repeat of the history
    top = s.argmax(1)
    histories = [[cat.items[i] for i in hist.indices[hist.indptr[u]:hist.indptr[u + 1]]] for u in users]
    facts = [T.reason_facts(h, cat.items[int(i)], d=ctx.cfg.domain) for h, i in zip(histories, top, strict=True)]
    messages = [T.reason_messages(h, cat.items[int(i)], ctx.cfg.domain) for h, i in zip(histories, top, strict=True)]
    backend = TransformersBackend.from_loaded(module.reason_writer(), module.pretrained.tokenizer,
                                              f"llmrec:{model_key}", batch_size=8,
                                              max_new_tokens=c.reason_max_new_tokens, repetition_penalty=1.15,
                                              seed=ctx.cfg.seed)
    texts, status = generate_checked(backend, messages)
    vocab = vocabulary(cat)
    grounded = [T.grounded_share(t, f) for t, f in zip(texts, facts, strict=True)]
    unsupported = [T.unsupported_terms(t, f, vocab) for t, f in zip(texts, facts, strict=True)]
    tbl = pa.Table.from_pydict({
        "user_id": [cat.user_ids[u] for u in users],
        "user_idx": pa.array(users, pa.int32()), "item_id": [cat.item_ids[int(i) - 1] for i in top],
        "item_idx": pa.array(top, pa.int32()), "reason": texts, "status": status,
        "grounded": pa.array(grounded, pa.float32()), "unsupported": unsupported,
        "prompt_version": [T.REASON_PROMPT_VERSION] * len(users), "model": [model_key] * len(users)},
        schema=schemas.REASONS)
    warehouse.write_arrow(tbl, ctx.home, "reasons", ctx.ds)
    ok = [i for i, st in enumerate(status) if st == "ok"]
    served = {cat.user_ids[users[i]]: [cat.item_ids[int(top[i]) - 1], texts[i]] for i in ok}
    warehouse.write_json(ctx.model_dir(STAGE, MODEL) / "reasons.json", served)  # served beside the top item
    summary = {"users": len(users), "ok": len(ok), "degenerate": len(users) - len(ok),
               "grounded_share": round(float(np.mean([grounded[i] for i in ok])), 4) if ok else None,
               "unsupported_share": round(float(np.mean([bool(unsupported[i]) for i in ok])), 4) if ok else None}
    print(f"  llmrec reasons: {summary}", flush=True)
    return summary


def vocabulary(cat: Catalogue) -> set[str]:
    """Brands and category names of the catalogue, lower-cased: what a reason may not name unless the facts do."""
    terms = set()
    for row in cat.items.values():
        for t in [row.get("brand"), *(row.get("categories") or [])]:
            t = " ".join(str(t or "").lower().split())
            if t and t != "unknown" and len(t.split()) <= 4:
                terms.add(t)
    return terms


def generate_checked(backend: TransformersBackend, messages: list[list[dict]]) -> tuple[list[str], list[str]]:
    """Greedy texts; degenerate ones (describe's check) retried once with sampling, then flagged."""
    texts, status = [""] * len(messages), ["ok"] * len(messages)
    again = []
    for i, gen in backend.stream(messages):
        texts[i] = T.clean_output(gen.text)
        if T.degenerate_reason(gen.text):
            again.append(i)
    if again:
        for j, gen in backend.stream([messages[i] for i in again], retry=True):
            i = again[j]
            reason = T.degenerate_reason(gen.text)
            texts[i] = T.clean_output(gen.text) if not reason else gen.text
            status[i] = "ok" if not reason else "degenerate"
    return texts, status
