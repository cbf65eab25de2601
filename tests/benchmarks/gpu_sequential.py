"""SASRec and SASRec + GRASP trained on a GPU through DeepSpeed (nccl; ZeRO-2 with bf16, and ZeRO-0 in fp32) on
Amazon Beauty, evaluated with the shared protocol. Not part of ``make bench``: it needs a CUDA GPU.

A GPU node seldom holds the warehouse, so this runs in three steps:

    # here, after bench_sequential.py has built HOME (split, text_embeddings, neighbours of ds 2026-11-24):
    python tests/benchmarks/gpu_sequential.py pack BUNDLE [--home /tmp/recpipe-bench-beauty] [--text-source metadata]
    # on the GPU node, from the repository root, with BUNDLE copied there:
    python tests/benchmarks/gpu_sequential.py train BUNDLE --out DIR [--variant zero2_bf16] [--variant zero0_fp32]
    # here, with DIR/beauty_sequential_gpu.json copied back:
    python tests/benchmarks/gpu_sequential.py report DIR/beauty_sequential_gpu.json

``pack`` copies the ``sequences``, ``user_map`` and ``item_map`` partitions and GRASP's frozen text tables (the
output of ``pipelines.training.sequential.feature_tables``, stored as float16: the whole ``text_embeddings`` table is
too big to travel). ``train`` runs the real ``train_sequential`` stage with ``train_sequential.distributed.device=cuda``,
``dist_backend=nccl`` and
each DeepSpeed config, its text tables read from the bundle instead of being pooled again, then scores both models
exactly as the ``evaluate`` stage does (full ranking and the same seeded 100 sampled negatives, slices).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.benchmarks.common import BEAUTY_DS, copy_partitions, every_model, machine, write_results  # noqa: E402

TABLES = ("sequences", "user_map", "item_map")
VARIANTS = {
    "zero2_bf16": "infra/deepspeed/zero2_gpu.json",
    "zero0_fp32": "infra/deepspeed/zero0_cpu.json",
}


def pack(bundle: Path, home: Path, source: str) -> None:
    import numpy as np

    from pipelines.config import CONF_DIR, load_config
    from pipelines.context import StageContext
    from pipelines.evaluation.data import load_eval_data
    from pipelines.training.sequential import feature_tables

    cfg = load_config(CONF_DIR / "amazon_beauty.yaml", [f"data.path={home}"])
    ctx = StageContext(cfg, BEAUTY_DS, home.resolve())
    copy_partitions(home, bundle, TABLES, "bench_sequential.py")
    data, _, _ = load_eval_data(ctx)
    tables = feature_tables(ctx, source, data.n_items, data.n_users)
    np.savez_compressed(bundle / "tables.npz", **{k: v.astype(np.float16) for k, v in tables.items()})
    (bundle / "bundle.json").write_text(json.dumps({"ds": BEAUTY_DS, "text_source": source, "home": str(home)}))
    print(f"packed {bundle}: {sum(f.stat().st_size for f in bundle.rglob('*') if f.is_file()) / 2**20:.1f} MiB")


def train(bundle: Path, out: Path, variants: list[str], device: str = "cuda", epochs: int = 0,
          seeds: list[int] | None = None, sets: list[str] | None = None) -> None:
    """``device=cpu`` (gloo, ZeRO-0 only) with a few ``epochs`` checks a bundle without a GPU; ``seeds`` repeat each
    variant with other training seeds, ``sets`` are extra ``--set`` overrides (e.g. a GRASP setting)."""
    import numpy as np
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        sys.exit("no CUDA GPU here: run `train` on a GPU node (the CPU path is bench_sequential.py)")
    os.environ.setdefault("DS_ACCELERATOR", device)
    import deepspeed

    from pipelines.config import CONF_DIR, load_config
    from pipelines.context import StageContext
    from pipelines.evaluation.data import load_eval_data, negatives_for
    from pipelines.stages import train_sequential

    meta = json.loads((bundle / "bundle.json").read_text())
    z = np.load(bundle / "tables.npz")
    tables = {k: z[k].astype(np.float32) for k in z.files}
    train_sequential.feature_tables = lambda ctx, source, n_items, n_users: tables  # pooled on the warehouse's machine
    home = (bundle / "home").resolve()
    out.mkdir(parents=True, exist_ok=True)
    base = StageContext(load_config(CONF_DIR / "amazon_beauty.yaml", [f"data.path={bundle}"]), meta["ds"], home)
    data, _, _ = load_eval_data(base)
    neg = negatives_for(base, data)  # drawn (seeded) as the evaluate stage draws them
    results, seed_used = {}, None
    for v, seed in [(v, s) for s in (seeds or [None]) for v in variants]:
        key = v + (f" seed={seed}" if seed is not None else "") + "".join(f" {x}" for x in sets or [])
        dist = "train_sequential.distributed"
        overrides = [f"data.path={bundle}", f"train_sequential.text_source={meta['text_source']}",
                     f"{dist}.device={device}", f"{dist}.dist_backend={'nccl' if device == 'cuda' else 'gloo'}",
                     f"{dist}.threads=0", f"{dist}.deepspeed_config={VARIANTS[v]}"]
        overrides += (every_model("train.epochs", epochs) if epochs else []) + list(sets or []) + \
            ([f"seed={seed}"] if seed is not None else [])
        results[key], seed_used = _train_variant(load_config(CONF_DIR / "amazon_beauty.yaml", overrides), meta,
                                                 home, data, neg, device, key)
        results[key]["deepspeed_config"] = VARIANTS[v]
    gpu = torch.cuda.get_device_name(0) if device == "cuda" else None
    payload = {"machine": {**machine(), "gpu": gpu, "torch": torch.__version__,
                           "cuda": torch.version.cuda, "deepspeed": deepspeed.__version__},
               "dataset": "amazon-beauty", "ds": meta["ds"], "seed": seed_used, "text_source": meta["text_source"],
               "protocol": "leave-one-out, test phase; full ranking and 100 sampled negatives (seeded as evaluate)",
               "results": results}
    (out / "beauty_sequential_gpu.json").write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {out / 'beauty_sequential_gpu.json'}")


def _train_variant(cfg, meta: dict, home: Path, data, neg, device: str, key: str) -> tuple[dict, int]:
    """The real ``train_sequential`` stage with ``cfg``, then both models scored as ``evaluate`` scores them: their
    figures with the stage's seconds and peak GPU memory, and the seed."""
    import torch

    from pipelines import runner
    from pipelines.context import StageContext
    from pipelines.evaluation import scorers
    from pipelines.evaluation.data import eval_kwargs
    from pipelines.evaluation.protocol import evaluate

    ctx = StageContext(cfg, meta["ds"], home)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    ctx.run_dir.mkdir(parents=True, exist_ok=True)
    rec = runner.run_stage("train_sequential", ctx)
    wall = time.perf_counter() - t0
    result: dict = {}
    for name, summary in rec["models"].items():
        scorer, _ = scorers.vectors(ctx.model_dir("train_sequential", name) / "vectors.npz", data)
        m = evaluate(scorer, data, neg, "test", **eval_kwargs(cfg))
        result[name] = {**m, **{k: summary[k] for k in (
            "epoch_seconds", "best_epoch", "epochs_run", "best_valid_NDCG@10", "seconds_to_best", "train_seconds")}}
        print(f"  {key} {name}: test full NDCG@10 {m['full']['NDCG@10']:.4f} HR@10 {m['full']['HR@10']:.4f}, "
              f"{summary['epoch_seconds']} s/epoch", flush=True)
    result["seed"] = cfg.seed
    result["stage_seconds"] = round(wall, 1)
    result["peak_gpu_memory_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1) if device == "cuda" else None
    return result, cfg.seed


def report(path: Path, name: str = "beauty_sequential_gpu") -> None:
    payload = json.loads(path.read_text())
    rows = [("run", "model", "full NDCG@10", "full HR@10", "100-neg NDCG@10", "short-history NDCG@10",
             "tail-items NDCG@10", "s/epoch", "epochs (best)", "valid NDCG@10", "peak GPU MiB", "GRASP vs SASRec")]
    for v, models in payload["results"].items():
        for model in ("sasrec", "grasp"):
            if model in models:
                r = models[model]
                g = "-"
                if model == "grasp" and "sasrec" in models:
                    g = f"{r['full']['NDCG@10'] / models['sasrec']['full']['NDCG@10'] - 1:+.1%}"
                rows.append((v, model, f"{r['full']['NDCG@10']:.4f}", f"{r['full']['HR@10']:.4f}",
                             f"{r['sampled100']['NDCG@10']:.4f}" if "sampled100" in r else "-",
                             f"{r['slices']['short_history']['full']['NDCG@10']:.4f}",
                             f"{r['slices']['tail_items']['full']['NDCG@10']:.4f}",
                             f"{r['epoch_seconds']}", f"{r['epochs_run']} ({r['best_epoch']})",
                             f"{r['best_valid_NDCG@10']:.4f}", f"{models['peak_gpu_memory_mb']}", g))
    m = payload["machine"]
    notes = [f"GPU: {m['gpu']}, torch {m['torch']} (CUDA {m['cuda']}), DeepSpeed {m['deepspeed']}, one process, nccl",
             f"dataset {payload['dataset']}, ds {payload['ds']}, seed 42 unless the run names one, text source "
             f"{payload['text_source']}; {payload['protocol']}",
             "GRASP's text tables were pooled on the CPU machine and travelled as float16 (see the module docstring)",
             *payload.get("notes", [])]
    write_results(name, payload, rows, notes)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pack")
    p.add_argument("bundle", type=Path)
    p.add_argument("--home", type=Path, default=Path("/tmp/recpipe-bench-beauty"))
    p.add_argument("--text-source", default="metadata", choices=("metadata", "descriptions"))
    t = sub.add_parser("train")
    t.add_argument("bundle", type=Path)
    t.add_argument("--out", type=Path, required=True)
    t.add_argument("--variant", action="append", choices=sorted(VARIANTS))
    t.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    t.add_argument("--seed", type=int, action="append", help="train with this seed too (repeatable)")
    t.add_argument("--set", action="append", default=[], help="an extra config override, KEY=VALUE")
    t.add_argument("--epochs", type=int, default=0, help="cap the epochs (a smoke run); 0: the config's")
    r = sub.add_parser("report")
    r.add_argument("json", type=Path)
    r.add_argument("--name", default="beauty_sequential_gpu", help="the results file's name")
    a = ap.parse_args()
    if a.cmd == "pack":
        a.bundle.mkdir(parents=True, exist_ok=True)
        pack(a.bundle, a.home, a.text_source)
    elif a.cmd == "train":
        train(a.bundle, a.out, a.variant or list(VARIANTS), a.device, a.epochs, a.seed, a.set)
    else:
        report(a.json, a.name)


if __name__ == "__main__":
    main()
