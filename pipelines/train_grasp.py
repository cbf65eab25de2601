"""The ``train_grasp`` stage: SASRec (the baseline) and SASRec + GRASP holistic attention, same split, same seed.

Reads ``sequences`` (train part for training, valid for early stopping), and for GRASP ``text_embeddings`` and
``neighbours`` of ``train_grasp.text_source`` (``descriptions``: the LLM's text, ``metadata``: title and attributes),
frozen. For each model it writes ``runs/<ds>/train_grasp/<model>/``:

* ``vectors.npz``: ``user_valid`` (U, H) after the train items, ``user_test`` (U, H) after train + valid items and
  ``items`` (N + 1, H); a user's scores are ``user @ items.T``, which is exactly the model's output, so ``evaluate``
  scores them with the shared protocol and ``register`` serves them through the same pyfunc as every model;
* ``result.json``: epochs, best epoch, valid NDCG@10 per epoch, seconds per epoch, peak memory.

Checkpoints live under ``checkpoints/train_grasp/<ds>/<model>-<key>/`` where ``key`` hashes the model and loop
settings and the input data, so a re-run of the same night resumes (or reuses the finished model) and any change
trains afresh. Under ``torchrun``/``deepspeed`` every rank trains; only rank 0 writes the outputs.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from pathlib import Path

import numpy as np
import pyarrow.compute as pc

from jobs import common

MODELS = ("sasrec", "grasp")
# train_grasp keys passed through to GRASPConfig under the same name; SASRec ignores them (and ``text_source``)
GRASP_KEYS = ("enrich_items", "user_neighbours", "own_user_text", "text_init", "item_adapter_ids")


def feature_tables(ctx, source: str, n_items: int, n_users: int) -> dict[str, np.ndarray]:
    """``item_sem``/``item_nb`` (N + 1, D) and ``user_sem``/``user_nb`` (U, D): own vectors and neighbours' mean."""
    import torch

    from models.grasp import mean_neighbours
    from pipelines.neighbours import vectors_of

    for table, stage in (("text_embeddings", "embed"), ("neighbours", "neighbours")):
        if not common.partition_path(ctx.home, table, ctx.ds).exists():
            raise FileNotFoundError(f"GRASP needs the '{table}' table of ds={ctx.ds}: run the '{stage}' stage first "
                                    f"(recpipe run --ds {ctx.ds} --until neighbours)")
    emb = common.read_arrow(ctx.home, "text_embeddings", ctx.ds)
    nb = common.read_arrow(ctx.home, "neighbours", ctx.ds, columns=["kind", "source", "idx", "rank", "neighbour_idx"])
    out = {}
    for kind, rows in (("item", n_items + 1), ("user", n_users)):
        vec, idx, _ = vectors_of(emb, kind, source)
        if len(idx) == 0:
            raise ValueError(f"text_embeddings of ds={ctx.ds} has no {kind} vectors from source '{source}': add "
                             f"'{source}' to embed.sources and re-run embed, or set train_grasp.text_source")
        sem = np.zeros((rows, vec.shape[1]), np.float32)
        sem[idx] = vec
        part = nb.filter(pc.and_(pc.equal(nb.column("kind"), kind), pc.equal(nb.column("source"), source)))
        k = int(pc.max(part.column("rank")).as_py() or 0) + 1 if part.num_rows else 1
        table = np.full((rows, k), -1, np.int64)
        table[part.column("idx").to_numpy(), part.column("rank").to_numpy()] = part.column("neighbour_idx").to_numpy()
        pooled = mean_neighbours(torch.from_numpy(sem), torch.from_numpy(table)).numpy()
        out[f"{kind}_sem"], out[f"{kind}_nb"] = sem, pooled
    return out


def build_model(name: str, n_items: int, cfg, tables: dict[str, np.ndarray] | None):
    import torch

    from models.grasp import GRASPConfig, build
    from models.sasrec import SASRec, SASRecConfig

    t = cfg.train_grasp
    torch.manual_seed(cfg.seed)
    scfg = SASRecConfig(n_items=n_items, max_len=t.max_len, hidden=t.hidden, n_layers=t.n_layers,
                        n_heads=t.n_heads, dropout=t.dropout, attn_dropout=t.dropout,
                        item_init_std=t.item_init_std)
    if name == "sasrec":
        return SASRec(scfg)
    assert tables is not None
    gcfg = GRASPConfig(text_dim=tables["item_sem"].shape[1], hidden=t.hidden, dropout=t.dropout,
                       **{k: getattr(t, k) for k in GRASP_KEYS})
    enhancer = build(n_items, t.hidden, {k: torch.from_numpy(v) for k, v in tables.items()}, gcfg)
    return SASRec(scfg, enhancer)


def loop_config(cfg):
    from pipelines.train import LoopConfig

    t = cfg.train_grasp
    return LoopConfig(batch_size=t.batch_size, lr=t.lr, weight_decay=t.weight_decay, epochs=t.epochs,
                      patience=t.patience, loss=t.loss, seed=cfg.seed, deepspeed_config=t.deepspeed_config,
                      dist_backend=t.dist_backend, device=t.device)


def _fingerprint(*parts) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p.tobytes() if isinstance(p, np.ndarray) else json.dumps(p, sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


def _code_version(name: str) -> str:
    root = Path(__file__).resolve().parents[1] / "models"
    files = ["sasrec.py"] + (["grasp.py"] if name == "grasp" else [])
    return hashlib.sha256(b"".join((root / f).read_bytes() for f in files)).hexdigest()[:12]


def run(ctx) -> dict:
    import torch

    from pipelines.stages import load_eval_data
    from pipelines.train import fit, init_distributed, user_vectors

    t = ctx.cfg.train_grasp
    if t.threads:
        torch.set_num_threads(t.threads)
    data, _, _ = load_eval_data(ctx)
    tables = feature_tables(ctx, t.text_source, data.n_items, data.n_users) if "grasp" in t.models else None
    rank, world = init_distributed(t.dist_backend)
    out, outputs = {}, {}
    for name in t.models:
        t0 = time.perf_counter()
        model = build_model(name, data.n_items, ctx.cfg, tables if name == "grasp" else None)
        settings = {"model": name, "train_grasp": dataclasses.asdict(t), "seed": ctx.cfg.seed}
        if name == "sasrec":  # the baseline does not read text: GRASP-only settings do not retrain it
            for k in ("text_source", *GRASP_KEYS):
                settings["train_grasp"].pop(k)
        for k in ("epochs", "patience", "threads", "models"):  # more epochs resume; threads change no result
            settings["train_grasp"].pop(k)
        settings["code"] = _code_version(name)  # a change to the model's code trains afresh
        if world > 1:  # a DeepSpeed checkpoint is sharded per rank: another world size starts afresh
            settings["world_size"] = world
        key = _fingerprint(settings, data.train.indptr, data.train.indices, data.valid,
                           *(tables.values() if name == "grasp" else ()))
        ckpt = ctx.home / "checkpoints" / "train_grasp" / ctx.ds / f"{name}-{key}"
        n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
        if rank == 0:
            print(f"  {name}: {n_params:,} trainable parameters, {world} process(es), checkpoints in {ckpt}", flush=True)
        res = fit(model, data, loop_config(ctx.cfg), t.max_len, ckpt, name)
        dev = "cpu" if t.device == "cpu" else next(model.parameters()).device
        summary = {**res.summary(), "parameters": n_params, "seconds": round(time.perf_counter() - t0, 2),
                   "text_source": t.text_source if name == "grasp" else None, "checkpoint": str(ckpt)}
        out[name] = {k: v for k, v in summary.items() if k != "history"}
        if rank == 0:  # the serving vectors: valid phase from train, test phase from train + valid
            uv, items = user_vectors(model, data.history("valid"), data.n_users, t.max_len, 1024, dev)
            ut, _ = user_vectors(model, data.history("test"), data.n_users, t.max_len, 1024, dev)
            d = ctx.run_dir / "train_grasp" / name
            d.mkdir(parents=True, exist_ok=True)
            tmp = d / "vectors.tmp.npz"
            np.savez(tmp, user_valid=uv, user_test=ut, items=items)
            tmp.replace(d / "vectors.npz")
            common.write_json(d / "result.json", summary)
            outputs[name] = str(d)
            print(f"  {name}: best valid NDCG@10 {res.best_valid_ndcg10:.4f} at epoch {res.best_epoch} of "
                  f"{res.epochs_run}, {summary['epoch_seconds']} s/epoch", flush=True)
    return {"rows_out": len(out), "models": out, "world_size": world, "outputs": outputs}


def scorer(ctx, name: str, data):
    """The evaluated model and the arrays served through MLflow, from ``vectors.npz``."""
    from pipelines.wals import FactorScorer

    z = np.load(ctx.run_dir / "train_grasp" / name / "vectors.npz")
    items = z["items"]
    if z["user_test"].shape[0] != data.n_users or items.shape[0] != data.n_items + 1:
        raise ValueError(f"{ctx.run_dir / 'train_grasp' / name} was trained on another split of ds={ctx.ds}: "
                         "re-run the train_grasp stage")
    return FactorScorer({"valid": (z["user_valid"], items), "test": (z["user_test"], items)}), {
        "user_emb": z["user_test"], "item_emb": items, "item_bias": np.zeros(data.n_items + 1, np.float32)}


def trained(ctx) -> list[str]:
    return [m for m in MODELS if (ctx.run_dir / "train_grasp" / m / "vectors.npz").exists()]
