"""The ``evaluate`` stage: every model of the day scored with the one protocol, serving artifacts, the report.

Writes ``runs/<ds>/metrics.json`` (per model: test ``full``, ``sampled100``, ``slices``, with ``split.cold_items``
the groups ``cold`` and ``warm``; ``valid`` without slices, its ``cold`` group the cold-valid users),
``runs/<ds>/ranks/<model>.npz`` (test phase, per evaluated user: ``users``, the target's 0-based rank under each
protocol, slice membership; what paired comparisons and bootstrap intervals are computed from),
``runs/<ds>/models.json`` (the serving artifact directory of each model), ``report.md`` with plots, and on first
use the ``negatives`` partition. With ``split.cold_items`` the cold-item baselines
(``pipelines.evaluation.cold_start``) are scored too; one whose inputs are missing is named in the stage record's
``skipped`` with the reason.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from jobs import warehouse
from pipelines import serving
from pipelines.context import StageContext, StageResult
from pipelines.evaluation import report
from pipelines.evaluation.data import eval_kwargs, evaluation_users, load_eval_data, negatives_for
from pipelines.evaluation.protocol import evaluate
from pipelines.evaluation.scorers import model_zoo
from pipelines.summary import read_json


def save_ranks(path: Path, kept: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.npz")
    np.savez_compressed(tmp, **kept)
    tmp.replace(path)


def run(ctx: StageContext) -> StageResult:
    data, user_ids, item_ids = load_eval_data(ctx)
    neg = negatives_for(ctx, data)
    kw = eval_kwargs(ctx.cfg)
    users = evaluation_users(data, ctx.cfg.eval) if ctx.cfg.eval.users else None
    metrics, seconds, model_dirs = {}, {}, {}
    hist = data.history("test")
    split_cold = read_json(ctx.run_dir / "stages" / "split.json").get("cold", {})
    skipped: dict[str, str] = {}  # models left out for lack of inputs (the cold-item baselines), with the reason
    zoo = model_zoo(ctx, skipped)
    for name, why in skipped.items():
        print(f"  evaluate {name}: skipped ({why})")
    for name, factory in zoo.items():
        model, arrays = factory(data)
        t0 = time.perf_counter()
        kept: dict = {}
        metrics[name] = evaluate(model, data, neg, "test", users=users, keep=kept, **kw)
        seconds[name] = round(time.perf_counter() - t0, 3)
        save_ranks(ctx.run_dir / "ranks" / f"{name}.npz", kept)
        valid = evaluate(model, data, neg, "valid", users=users, **kw)
        metrics[name]["valid"] = {k: v for k, v in valid.items() if k != "slices"}
        if "cold" in metrics[name]:  # the split's count of cold-target users it could not keep (no history left)
            metrics[name]["cold"]["users_dropped"] = split_cold.get("cold_users_dropped")
        metrics[name]["eval_seconds"] = seconds[name]
        if getattr(model, "notes", None):  # how an evaluated-only model was set up (a cascade's mix, say)
            metrics[name]["notes"] = model.notes
        if arrays is not None:  # a cascade is evaluated, not served
            model_dirs[name] = str(serving.save_scorer(ctx.run_dir / "models" / name, name, user_ids, item_ids,
                                                       top_k=ctx.cfg.mlflow.top_k, hist_indptr=hist.indptr,
                                                       hist_indices=hist.indices, **arrays))
        print(f"  evaluate {name}: test full NDCG@10={metrics[name]['full']['NDCG@10']:.4f} "
              f"HR@10={metrics[name]['full']['HR@10']:.4f} ({seconds[name]} s for {metrics[name]['full']['users']} users)")
    warehouse.write_json(ctx.run_dir / "metrics.json", metrics)
    warehouse.write_json(ctx.run_dir / "models.json", model_dirs)
    report.write(ctx, metrics, data)
    return StageResult(int((data.test > 0).sum()) if users is None else len(users),
                       {"metrics": str(ctx.run_dir / "metrics.json"), **model_dirs},
                       details={"models": sorted(metrics), "eval_seconds": seconds,
                                "users": "all" if users is None else len(users),
                                **({"skipped": skipped} if skipped else {})})
