"""Gated promotion of a registered model's ``challenger`` to ``champion``, on one day's test users.

``recpipe promote`` calls ``promote``; the ``promote_model`` Airflow DAG calls ``promote_task``. Both aliases are
loaded from the registry as served (``models:/NAME@alias``), scored on exactly the same users (full ranking through
their top-k lists, each user's earlier items excluded), and ``champion`` moves only if the challenger is better on
``mlflow.promote_metric`` by more than ``mlflow.promote_min_delta``. Without ``--ds`` the challenger is judged on the
day it was registered from. Every decision is kept (numbered ``promotion.<n>`` tags with time, day, versions,
metric values, reason and trigger, on the registered model and the version); the latest also sits in
``promotion.decision``/``promotion.reason`` on the version.
"""
from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path

import numpy as np

from pipelines.config import Config, load_config
from pipelines.context import StageContext, resolve_home
from pipelines.evaluation.data import load_eval_data
from pipelines.evaluation.protocol import metrics_from_ranks
from pipelines.registry import CHALLENGER, CHAMPION, client, model_name
from pipelines.summary import successful_days


def latest_successful_ds(home: Path) -> str:
    """The newest ``ds`` whose ``runs/<ds>/summary.json`` says ``success``; LookupError if none."""
    done = successful_days(home)
    if not done:
        raise LookupError(f"no successful run under {home / 'runs'}")
    return done[-1]


def eval_set(cfg: Config, home: Path, ds: str) -> dict:
    """Test targets of ``ds``: ``{"user_ids", "exclude", "targets"}`` (one list entry per test user).

    ``exclude[i]`` holds user ``i``'s earlier items (train + valid), the target never.
    """
    data, user_ids, item_ids = load_eval_data(StageContext(cfg, ds, home))
    hist = data.history("test")
    users = [u for u in range(data.n_users) if data.test[u] > 0]
    ids = np.asarray(item_ids, dtype=object)
    return {"user_ids": [user_ids[u] for u in users],
            "exclude": [[i for i in ids[hist.indices[hist.indptr[u]:hist.indptr[u + 1]]] if i != ids[data.test[u]]]
                        for u in users],
            "targets": [ids[data.test[u]] for u in users]}


def score_topk(model, user_ids: list[str], exclude: list[list[str]], targets: list[str], ks: tuple[int, ...]) -> dict:
    """HR@k / NDCG@k of a served model on one held-out item per user (full ranking via its top-k list).

    A target outside the top ``max(ks)`` gets rank ``max(ks)``, which no cut-off counts (so no MRR here).
    """
    import pandas as pd

    kmax = max(ks)
    out = model.predict(pd.DataFrame({"user_id": user_ids, "exclude": exclude}), params={"k": kmax})
    found = zip(out["item_ids"], targets, strict=True)
    ranks = np.array([lst.index(t) if t in lst else kmax for lst, t in found])
    return {k: v for k, v in metrics_from_ranks(ranks, ks).items() if k != "MRR"}


def decide(cfg: Config, home: Path, model: str, ds: str, eval_set: dict) -> dict:
    """Score both aliases of ``model`` on ``eval_set``, move ``champion`` if the challenger wins, tag the decision."""
    import mlflow

    c = client(cfg, home)
    name = model_name(cfg, model)
    try:
        chal = c.get_model_version_by_alias(name, CHALLENGER)
    except mlflow.exceptions.MlflowException:
        raise LookupError(f"registered model '{name}' has no '{CHALLENGER}' version; run the pipeline first") from None
    try:
        champ = c.get_model_version_by_alias(name, CHAMPION)
    except mlflow.exceptions.MlflowException:
        champ = None
    metric, ks = cfg.mlflow.promote_metric, tuple(cfg.eval.ks)
    args = (eval_set["user_ids"], eval_set["exclude"], eval_set["targets"], ks)
    chal_m = score_topk(mlflow.pyfunc.load_model(f"models:/{name}@{CHALLENGER}"), *args)
    result = {"model": name, "ds": ds, "metric": metric, "challenger": {"version": chal.version, **chal_m}}
    if champ is None:
        promoted, reason = True, f"no champion yet; challenger v{chal.version} has {metric}={chal_m[metric]:.5f}"
    elif champ.version == chal.version:
        promoted, reason = False, f"challenger v{chal.version} already is the champion"
    else:
        champ_m = score_topk(mlflow.pyfunc.load_model(f"models:/{name}@{CHAMPION}"), *args)
        result["champion"] = {"version": champ.version, **champ_m}
        delta = chal_m[metric] - champ_m[metric]
        promoted = delta > cfg.mlflow.promote_min_delta
        verb = "beats" if promoted else "does not beat"
        reason = (f"challenger v{chal.version} {verb} champion v{champ.version} on {metric} of ds={ds} test users "
                  f"({chal_m[metric]:.5f} vs {champ_m[metric]:.5f}, delta {delta:+.5f}, "
                  f"required > {cfg.mlflow.promote_min_delta})")
    if promoted:
        c.set_registered_model_alias(name, CHAMPION, chal.version)
    record_decision(c, name, chal.version, {
        "time": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "ds": ds, "metric": metric,
        "decision": "promoted" if promoted else "rejected", "reason": reason, "challenger": result["challenger"],
        "champion": result.get("champion", {"version": champ.version} if champ else None),
        "trigger": f"airflow:{os.environ['AIRFLOW_CTX_DAG_ID']}" if os.environ.get("AIRFLOW_CTX_DAG_ID") else "cli"})
    return {**result, "promoted": promoted, "reason": reason}


def record_decision(c, name: str, version: str, decision: dict) -> None:
    """Keep every decision: a numbered tag ``promotion.<n>`` (JSON) on the version and the registered model, and
    the latest in ``promotion.decision``/``promotion.reason`` on the version. Nothing earlier is overwritten."""
    model = c.get_registered_model(name)
    n = 1 + sum(1 for k in (model.tags or {}) if k.startswith("promotion.") and k.split(".")[1].isdigit())
    text = json.dumps({**decision, "version": str(version)}, default=str)
    c.set_registered_model_tag(name, f"promotion.{n:05d}", text)
    c.set_model_version_tag(name, version, f"promotion.{n:05d}", text)
    c.set_model_version_tag(name, version, "promotion.decision", decision["decision"])
    c.set_model_version_tag(name, version, "promotion.reason", decision["reason"])


def decisions(cfg: Config, home: Path, model: str) -> list[dict]:
    """Every recorded promotion decision of ``model``, oldest first."""
    c = client(cfg, home)
    tags = c.get_registered_model(model_name(cfg, model)).tags or {}
    return [json.loads(v) for k, v in sorted(tags.items()) if k.startswith("promotion.") and k.split(".")[1].isdigit()]


def challenger_ds(cfg: Config, home: Path, model: str) -> str | None:
    """The day the current challenger was registered from (its ``recpipe.ds`` tag), if any."""
    import mlflow

    c = client(cfg, home)
    try:
        return c.get_model_version_by_alias(model_name(cfg, model), CHALLENGER).tags.get("recpipe.ds")
    except mlflow.exceptions.MlflowException:
        return None


def promote(cfg: Config, home: Path, model: str, ds: str | None) -> dict:
    """Promote ``model``'s challenger if it beats the champion on ``ds`` (None: latest successful run).

    Returns ``{"model", "ds", "metric", "challenger", ["champion"], "promoted", "reason"}``.
    """
    ds = ds or challenger_ds(cfg, home, model) or latest_successful_ds(home)
    return decide(cfg, home, model, ds, eval_set(cfg, home, ds))


def promote_task(model: str, ds: str | None = None, config: str | None = None,
                 overrides: list[str] | None = None, home: str | None = None) -> dict:
    """Airflow's entry point: empty ``ds``/``config``/``home`` mean the defaults; returns a small JSON-safe dict."""
    cfg = load_config(config or None, list(overrides or []))
    return promote(cfg, resolve_home(home), model, ds or None)
