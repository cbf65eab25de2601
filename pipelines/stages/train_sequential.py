"""The ``train_sequential`` stage: SASRec (the baseline) and SASRec + GRASP holistic attention, same split and seed.

Reads ``sequences`` (train part for training, valid for early stopping), and for GRASP ``text_embeddings`` and
``neighbours`` of ``train_sequential.text_source`` (``descriptions``: the LLM's text, ``metadata``: title and
attributes), frozen. For each model it writes ``runs/<ds>/train_sequential/<model>/``:

* ``vectors.npz``: ``user_valid`` (U, H) after the train items, ``user_test`` (U, H) after train + valid items and
  ``items`` (N + 1, H); a user's scores are ``user @ items.T``, which is exactly the model's output, so ``evaluate``
  scores them with the shared protocol and ``register`` serves them through the same pyfunc as every model;
* ``forward/``: the model's config and weights (safetensors, no optimiser state; GRASP's text tables), which
  ``register`` logs with the model so a request's ``history`` runs the forward pass (``pipelines.serving``);
* ``result.json``: epochs, best epoch, valid NDCG@10 per epoch, seconds per epoch, peak memory.

Checkpoints live under ``checkpoints/train_sequential/<ds>/<model>-<key>/`` where ``key`` hashes the model and loop
settings, the model's code and the input data, so a re-run of the same night resumes (or reuses the finished model)
and any change trains afresh. Under ``torchrun``/``deepspeed`` every rank trains; only rank 0 writes the outputs.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import time

import numpy as np
import torch

from jobs import warehouse
from pipelines import refresh, serving
from pipelines.context import StageContext, StageResult
from pipelines.evaluation.data import load_eval_data
from pipelines.refresh import carry_item_rows, uncarried_cold
from pipelines.training.distributed import init_distributed
from pipelines.training.loop import damage, fit
from pipelines.training.sequential import (
    SequentialTask,
    build_model,
    code_version,
    feature_tables,
    reads_text,
    user_vectors,
)

STAGE = "train_sequential"


def _fingerprint(*parts) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p.tobytes() if isinstance(p, np.ndarray) else json.dumps(p, sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


def checkpoint_settings(ctx: StageContext, name: str, world: int) -> dict:
    """Everything that changes what ``name`` learns; more epochs, patience or min_epochs resume instead, threads
    change nothing, SASRec does not read GRASP's settings, and only a model that reads the text
    (``reads_text``) has its source in the key."""
    t = ctx.cfg.train_sequential.for_model(name)
    train = {k: v for k, v in dataclasses.asdict(t.train).items() if k not in ("epochs", "patience", "min_epochs")}
    dist = {k: v for k, v in dataclasses.asdict(t.distributed).items() if k != "threads"}
    settings = {"model": name, "sasrec": dataclasses.asdict(t.sasrec), "train": train, "distributed": dist,
                "loss": t.loss, "seed": ctx.cfg.seed, "code": code_version(name)}
    if name == "grasp":
        settings.update(grasp=dataclasses.asdict(t.grasp), text_source=t.text_source)
    elif reads_text(name, ctx.cfg):
        settings.update(text_source=t.text_source)
    if t.loss == "sampled":  # the sampled softmax's size (meaningless for the other losses: out of their keys)
        settings["negatives"] = t.negatives
    if t.soft_targets.weight:  # off, the option stays out of the key (as batching's and min_batches' below)
        settings["soft_targets"] = dataclasses.asdict(t.soft_targets)
    if t.batching != "length":  # the behaviour before the option stays out: checkpoints made then keep their keys
        settings["batching"] = t.batching
    if t.min_batches:  # so does the batch size's floor (the batch it gives depends on the data, also in the key)
        settings["min_batches"] = t.min_batches
    if world > 1:  # a DeepSpeed checkpoint is sharded per rank: another world size starts afresh
        settings["world_size"] = world
    return settings


def warm_start(ctx: StageContext, base: str, name: str, model, items: list[str]) -> tuple[dict | None, str]:
    """Load day ``base``'s best weights of ``name`` into ``model`` (rows re-indexed by item id, new items fresh);
    returns what was done (None: nothing to start from) and the base model's key."""
    rec = ctx.home / "runs" / base / STAGE / name / "result.json"
    if not rec.exists():
        return None, ""
    prev = json.loads(rec.read_text())
    best = ctx.home / "checkpoints" / STAGE / base / prev.get("model_key", "?") / "best.pt"  # in this home, moved or not
    if not best.exists():
        return None, ""
    why = damage(best)
    if why:  # cut short: the day trains from scratch instead of failing on it every night
        print(f"  WARNING: {name}: {base}'s weights {best} are damaged ({why}); training from scratch instead of "
              "fine-tuning them", flush=True)
        return None, ""
    imap = warehouse.read_arrow(ctx.home, "item_map", base).sort_by("item_idx")
    state, info = carry_item_rows(torch.load(best, map_location="cpu"), [""] + imap.column("item_id").to_pylist(),
                                  items, model)
    if info["tensors_skipped"] or info["tensors_missing"]:  # another architecture or size (ID-only weights for a
        # text-item model, say): a fine-tune would start half cold
        return None, ""
    model.load_state_dict(state, strict=False)
    return {"warm": True, "base": base, "base_model": prev.get("model_key"), **info}, prev.get("model_key", "")


def run(ctx: StageContext) -> StageResult:
    t = ctx.cfg.train_sequential
    if t.distributed.threads:
        torch.set_num_threads(t.distributed.threads)
    data, _, item_ids = load_eval_data(ctx)
    text_models = [name for name in t.models if reads_text(name, ctx.cfg)]
    tables = feature_tables(ctx, t.text_source, data.n_items, data.n_users) if text_models else None
    rank, world = init_distributed(t.distributed.dist_backend)
    plan = refresh.plan(ctx)
    out, outputs, warm_log, tasks = {}, {}, {}, {}
    for name in t.models:
        t0 = time.perf_counter()
        tm = t.for_model(name)  # the section with the model's per_model entry on top
        changes = t.model_changes(name)
        if changes and rank == 0:
            print(f"  {name}: train_sequential.per_model.{name} sets "
                  + ", ".join(f"{k}={new} (section: {old})" for k, (old, new) in changes.items()), flush=True)
        how = (tm.sasrec.max_len, tm.train.batch_size, tm.loss, tm.negatives, tm.batching, tm.min_batches,
               tm.soft_targets)
        if how not in tasks:  # models that batch alike share the task (its training rows are built once)
            tasks[how] = SequentialTask(data, tm.sasrec.max_len, tm.train.batch_size, tm.loss, batching=tm.batching,
                                        min_batches=tm.min_batches, world=world, soft=tm.soft_targets,
                                        item_text=tables["item_sem"] if name in text_models else None,
                                        negatives=tm.negatives)
        task = tasks[how]
        if task.batch_size != tm.train.batch_size and rank == 0:
            print(f"  {name}: batches of {task.batch_size} (train.batch_size {tm.train.batch_size}, min_batches "
                  f"{tm.min_batches}: {len(task.train.users):,} training users)", flush=True)
        model = build_model(name, data.n_items, ctx.cfg, tables if name in text_models else None, task.exclude)
        warm, base_key = (warm_start(ctx, plan.base, name, model, uncarried_cold(list(item_ids), data.cold))
                          if plan.incremental else (None, ""))
        train = dataclasses.replace(tm.train, batch_size=task.batch_size,
                                    epochs=min(tm.train.epochs, ctx.cfg.refresh.finetune_epochs) if warm
                                    else tm.train.epochs)
        warm_log[name] = warm or {"warm": False, "epochs": train.epochs}
        if warm:
            warm_log[name]["epochs"] = train.epochs
        key = _fingerprint(checkpoint_settings(ctx, name, world), data.train.indptr, data.train.indices, data.valid,
                           *(tables.values() if name in text_models else ()),
                           *([{"warm_from": base_key}] if base_key else []))  # full runs keep their keys
        ckpt = ctx.home / "checkpoints" / STAGE / ctx.ds / f"{name}-{key}"
        n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
        if rank == 0:
            how = (f", fine-tuned from {plan.base} ({warm['items_carried']} items carried, {warm['new_items']} new)"
                   if warm else "")
            print(f"  {name}: {n_params:,} trainable parameters, {world} process(es){how}, checkpoints in {ckpt}",
                  flush=True)
        res = fit(model, task, train, t.distributed, ctx.cfg.seed, ckpt, name, STAGE)
        dev = "cpu" if t.distributed.device == "cpu" else next(model.parameters()).device
        summary = {**res.summary(), "parameters": n_params, "batch_size": task.batch_size,
                   "seconds": round(time.perf_counter() - t0, 2),
                   "text_source": t.text_source if name in text_models else None, "checkpoint": str(ckpt),
                   "model_key": f"{name}-{key}"}
        out[name] = {k: v for k, v in summary.items() if k != "history"}
        if rank == 0:  # the serving vectors: valid phase from train, test phase from train + valid
            uv, items = user_vectors(model, data.history("valid"), data.n_users, tm.sasrec.max_len, 1024, dev)
            ut, _ = user_vectors(model, data.history("test"), data.n_users, tm.sasrec.max_len, 1024, dev)
            d = ctx.model_dir(STAGE, name)
            d.mkdir(parents=True, exist_ok=True)
            tmp = d / "vectors.tmp.npz"
            np.savez(tmp, user_valid=uv, user_test=ut, items=items)
            tmp.replace(d / "vectors.npz")
            serving.save_forward(d / "forward", model)  # what serving runs on a request's history
            warehouse.write_json(d / "result.json", summary)
            outputs[name] = str(d)
            print(f"  {name}: best valid NDCG@10 {res.best_valid_ndcg10:.4f} at epoch {res.best_epoch} of "
                  f"{res.epochs_run}, {summary['epoch_seconds']} s/epoch", flush=True)
    return StageResult(len(out), outputs, details={"models": out, "world_size": world,
                                                   "refresh": {"mode": plan.mode, "reason": plan.reason, **warm_log}})
