"""Hyperparameter search on valid only, outside every stage (``recpipe tune MODEL``).

``wals``: a grid over ``wals.grid`` (default ``DEFAULT_GRID``), each point fitted on train with the ``implicit``
engine and scored by valid NDCG@10 (full ranking); then the day's ``wals``, ``evaluate`` and ``register`` stages
run once with the chosen values, so the test set is touched by the chosen model only.
"""
from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path

from features.interactions import count_matrix
from jobs import common
from pipelines import runner
from pipelines.backends.wals import fit_implicit
from pipelines.config import Config
from pipelines.context import StageContext
from pipelines.evaluation.data import load_eval_data, negatives_for
from pipelines.evaluation.protocol import evaluate
from pipelines.evaluation.scorers import FactorScorer

DEFAULT_GRID = {"factors": [32, 64, 128], "regularization": [0.01, 0.05, 0.2], "alpha": [5.0, 10.0, 20.0]}


def tune_wals(cfg: Config, ds: str, home: Path) -> dict:
    """Grid search on valid; returns ``{"chosen": {..., "test": metrics}, "grid": [...]}``."""
    ctx = StageContext(cfg, ds, home)
    data, _, _ = load_eval_data(ctx)
    neg = negatives_for(ctx, data)
    m = count_matrix(common.read_arrow(home, "sequences", ds), data.n_users, data.n_items, ("train",))
    grid = cfg.wals.grid or DEFAULT_GRID
    keys = sorted(grid)
    results = []
    for values in itertools.product(*(grid[k] for k in keys)):
        p = dataclasses.replace(cfg.wals, engine="implicit", **dict(zip(keys, values, strict=True)))
        uf, itf, secs = fit_implicit(m, p)
        met = evaluate(FactorScorer({"valid": (uf, itf)}), data, neg, "valid", ks=tuple(cfg.eval.ks))
        results.append({**dict(zip(keys, values, strict=True)), "valid_NDCG@10": met["full"]["NDCG@10"],
                        "valid_HR@10": met["full"]["HR@10"], "fit_seconds": round(secs, 2)})
        print(f"  tune {dict(zip(keys, values, strict=True))}: valid NDCG@10={met['full']['NDCG@10']:.4f}")
    best = max(results, key=lambda r: r["valid_NDCG@10"])
    chosen = {k: best[k] for k in keys}
    tuned = dataclasses.replace(cfg, wals=dataclasses.replace(cfg.wals, **chosen))
    common.write_json(ctx.run_dir / "tuning" / "wals.json",
                      {"selected_by": "valid NDCG@10 (full ranking)", "chosen": chosen, "grid": results})
    summary = runner.run(tuned, ds, home, ["wals", "evaluate", "register"])
    overrides = " ".join(f"--set wals.{k}={v}" for k, v in chosen.items())
    print(f"chosen on valid: {chosen}; use with: {overrides}")
    return {"chosen": {**chosen, "test": summary["metrics"].get("wals", {}).get("full")}, "grid": results}


TUNERS = {"wals": tune_wals}
