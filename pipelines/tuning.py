"""Hyperparameter search on valid only, outside every stage (``recpipe tune MODEL``).

``wals``: a grid over ``wals.grid`` (default ``DEFAULT_GRID``), each point fitted on train with the ``implicit``
engine and scored by valid NDCG@10 (full ranking); then the day's ``wals``, ``evaluate`` and ``register`` stages
run once with the chosen values, so the test set is touched by the chosen model only.

``sasrec`` / ``grasp``: a grid over ``train_sequential.grid`` (default ``SEQUENTIAL_GRIDS``; keys relative to the
``train_sequential`` section), each point trained from scratch by the day's ``train_sequential`` stage (that model
only, early stopping on valid NDCG@10) and judged by its best valid NDCG@10; then ``train_sequential`` (the chosen
point's finished checkpoint is reused), ``evaluate`` and ``register`` run once. The day's upstream stages must have
run (``recpipe run --until neighbours``). The grid starts from the settings the model trains with (the section
with its ``per_model`` entry on top), and the chosen values go into ``train_sequential.per_model.<model>``, so tuning
one model leaves the other's settings as they were.

Every tuner writes ``runs/<ds>/tuning/<model>.json`` (the grid and its valid figures) and ``<model>.yaml``: the
whole config with the chosen values, to run with ``recpipe run --config`` on the next days.
"""
from __future__ import annotations

import copy
import dataclasses
import itertools
import json
from pathlib import Path
from typing import Any

from features.interactions import count_matrix
from jobs import warehouse
from pipelines import runner
from pipelines.backends.wals import fit_implicit
from pipelines.config import Config, dump_yaml, set_path
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
    m = count_matrix(warehouse.read_arrow(home, "sequences", ds), data.n_users, data.n_items, ("train",))
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
    warehouse.write_json(ctx.run_dir / "tuning" / "wals.json",
                      {"selected_by": "valid NDCG@10 (full ranking)", "chosen": chosen, "grid": results})
    summary = runner.run(tuned, ds, home, ["wals", "evaluate", "register"])
    conf = write_config(ctx, "wals", tuned)
    overrides = " ".join(f"--set wals.{k}={v}" for k, v in chosen.items())
    print(f"chosen on valid: {chosen}; use with: {overrides} (or --config {conf})")
    return {"chosen": {**chosen, "test": summary["metrics"].get("wals", {}).get("full")}, "grid": results,
            "config": str(conf)}


# Small grids that hold across data: the regularisation of the backbone (dropout) and its width for SASRec; for
# GRASP, how its text enters (item embeddings started from the text or not, the item adapter reading the id or
# not). Each point trains to early stopping, so on 2 CPU cores a Beauty-sized point takes minutes.
SEQUENTIAL_GRIDS: dict[str, dict[str, list]] = {
    "sasrec": {"sasrec.dropout": [0.2, 0.4, 0.6], "sasrec.hidden": [64, 128]},
    "grasp": {"grasp.text_init": [0.0, 0.3], "grasp.item_adapter_ids": [True, False]},
}


def replace_path(obj: Any, dotted: str, value: Any, section: str = "train_sequential") -> Any:
    """``obj`` (a frozen config dataclass) with the field at ``dotted`` (``sasrec.dropout``) set to ``value``;
    the field's own checks run. Unknown keys and values of another type are refused, naming the key."""
    head, _, rest = dotted.partition(".")
    if not dataclasses.is_dataclass(obj) or head not in {f.name for f in dataclasses.fields(obj)}:
        raise ValueError(f"{section}.grid: '{dotted}' names no setting of {section} (keys look like "
                         f"sasrec.dropout, train.lr, grasp.text_init)")
    cur = getattr(obj, head)
    if rest:
        return dataclasses.replace(obj, **{head: replace_path(cur, rest, value, f"{section}.{head}")})
    if dataclasses.is_dataclass(cur) or (type(cur) is not type(value)
                                          and not (isinstance(cur, float) and isinstance(value, int))):
        raise ValueError(f"{section}.grid: '{dotted}' takes a {type(cur).__name__}, got {value!r}")
    return dataclasses.replace(obj, **{head: float(value) if isinstance(cur, float) else value})


def with_point(section: Any, point: dict[str, Any]) -> Any:
    for k, v in point.items():
        section = replace_path(section, k, v)
    return section


def with_model_point(section: Any, model: str, point: dict[str, Any]) -> Any:
    """``section`` (train_sequential) with ``point``'s values added to ``per_model[model]`` (kept entries stay)."""
    entry = copy.deepcopy(section.per_model.get(model, {}))
    for dotted, value in point.items():
        set_path(entry, dotted, value)
    return dataclasses.replace(section, per_model={**section.per_model, model: entry})


def write_config(ctx: StageContext, model: str, cfg: Config) -> Path:
    path = ctx.run_dir / "tuning" / f"{model}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"# chosen by `recpipe tune {model}` on valid NDCG@10 for ds={ctx.ds}; the grid and its figures "
                    f"are in {model}.json beside this file\n" + dump_yaml(cfg))
    return path


def tune_sequential(model: str, cfg: Config, ds: str, home: Path) -> dict:
    """Grid search of ``model`` (``sasrec`` or ``grasp``) on valid; returns ``{"chosen", "grid", "config"}``."""
    t = cfg.train_sequential.for_model(model)  # what the model trains with; per_model emptied
    grid = t.grid or SEQUENTIAL_GRIDS[model]
    keys = sorted(grid)
    for k in keys:  # every key and value checked before anything trains
        for v in grid[k]:
            replace_path(t, k, v)
    # each point trains from scratch (a tuning day is not fine-tuned from the day before)
    base = dataclasses.replace(cfg, refresh=dataclasses.replace(cfg.refresh, mode="full"),
                               train_sequential=dataclasses.replace(t, models=(model,)))
    ctx = StageContext(base, ds, home)
    points = list(itertools.product(*(grid[k] for k in keys)))
    results = []
    for n, values in enumerate(points, 1):
        point = dict(zip(keys, values, strict=True))
        ts = with_point(base.train_sequential, point)
        print(f"  tune {model} [{n}/{len(points)}] {point} ...", flush=True)
        runner.run(dataclasses.replace(base, train_sequential=ts), ds, home, ["train_sequential"])
        res = json.loads((ctx.model_dir("train_sequential", model) / "result.json").read_text())
        results.append({**point, "valid_NDCG@10": res["best_valid_NDCG@10"], "best_epoch": res["best_epoch"],
                        "epochs_run": res["epochs_run"], "epoch_seconds": res["epoch_seconds"]})
        print(f"  tune {model} {point}: valid NDCG@10={res['best_valid_NDCG@10']:.4f} (epoch {res['best_epoch']})",
              flush=True)
    best = max(results, key=lambda r: r["valid_NDCG@10"])
    chosen = {k: best[k] for k in keys}
    ts = with_point(t, chosen)
    tuned = dataclasses.replace(cfg, train_sequential=with_model_point(cfg.train_sequential, model, chosen))
    warehouse.write_json(ctx.run_dir / "tuning" / f"{model}.json",
                      {"selected_by": "best valid NDCG@10 (full ranking) of each point's early-stopped training",
                       "chosen": chosen, "grid": results})
    summary = runner.run(dataclasses.replace(base, train_sequential=dataclasses.replace(ts, models=(model,))), ds,
                         home, ["train_sequential", "evaluate", "register"])
    conf = write_config(ctx, model, tuned)
    overrides = " ".join(f"--set train_sequential.per_model.{model}.{k}={json.dumps(v)}" for k, v in chosen.items())
    print(f"chosen on valid: {chosen}; use with: {overrides} (or --config {conf})")
    return {"chosen": {**chosen, "test": summary["metrics"].get(model, {}).get("full")}, "grid": results,
            "config": str(conf)}


TUNERS = {"wals": tune_wals,
          "sasrec": lambda cfg, ds, home: tune_sequential("sasrec", cfg, ds, home),
          "grasp": lambda cfg, ds, home: tune_sequential("grasp", cfg, ds, home)}
