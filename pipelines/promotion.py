"""Gated promotion of a registered model's ``challenger`` to ``champion``, on one day's test users.

``recpipe promote`` calls ``promote``; the ``promote_model`` Airflow DAG calls ``promote_task``. Both aliases are
loaded from the registry as served (``models:/NAME@alias``), scored on exactly the same users (full ranking through
their top-k lists, each user's earlier items excluded), and ``champion`` moves only if the challenger is better on
``mlflow.promote_metric`` by more than ``mlflow.promote_min_delta``. Without ``--ds`` the challenger is judged on the
day it was registered from. Every decision is kept (numbered ``promotion.<n>`` tags with time, day, versions,
metric values, reason and trigger, on the registered model and the version); the latest also sits in
``promotion.decision``/``promotion.reason`` on the version.

``champion`` only ever moves to a version whose evaluation is on record (the ``eval.full.*`` tags the pipeline's
register stage writes) and which loads and scores now: a challenger without them is refused, and the refusal is a
decision like any other. ``rollback`` moves ``champion`` back (to the champion before the current one, or to a given
version) with a recorded reason; ``history`` lists every decision, oldest first.
"""
from __future__ import annotations

import datetime as dt
import getpass
import json
import os
from pathlib import Path

import numpy as np

from pipelines.config import Config, load_config
from pipelines.context import StageContext, resolve_home
from pipelines.evaluation.data import load_eval_data
from pipelines.evaluation.protocol import metrics_from_ranks
from pipelines.registry import CHALLENGER, CHAMPION, challenger_day, client, decisions, model_name
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


def catalogue_size(model) -> int | None:
    """How many items a model loaded by ``mlflow.pyfunc.load_model`` ranks (``serving.TopKModel.n_items``), or None
    when it does not say."""
    unwrap = getattr(model, "unwrap_python_model", None)
    return getattr(unwrap(), "n_items", None) if unwrap is not None else None


def score_topk(model, user_ids: list[str], exclude: list[list[str]], targets: list[str], ks: tuple[int, ...]) -> dict:
    """HR@k / NDCG@k of a served model on one held-out item per user (full ranking via its top-k list).

    A target outside the top ``max(ks)`` gets rank ``max(ks)``, which no cut-off counts (so no MRR here).
    """
    import pandas as pd

    kmax = max(ks)
    n = catalogue_size(model)  # a served model refuses a k above its catalogue: a list of all of it is as good
    out = model.predict(pd.DataFrame({"user_id": user_ids, "exclude": exclude}), params={"k": min(kmax, n or kmax)})
    found = zip(out["item_ids"], targets, strict=True)
    ranks = np.array([lst.index(t) if t in lst else kmax for lst, t in found])
    return {k: v for k, v in metrics_from_ranks(ranks, ks).items() if k != "MRR"}


EVAL_TAG = "eval.full.NDCG_10"


def evaluated(version) -> bool:
    """Whether a registered version carries the evaluation the pipeline recorded when it registered it."""
    tags = version.tags or {}
    return EVAL_TAG in tags and tags.get("eval.status", "ok") == "ok"


def trigger() -> str:
    """Who or what asked: the Airflow DAG and run, or the command line and the user running it."""
    if os.environ.get("AIRFLOW_CTX_DAG_ID"):
        return f"airflow:{os.environ['AIRFLOW_CTX_DAG_ID']}/{os.environ.get('AIRFLOW_CTX_DAG_RUN_ID', '')}".rstrip("/")
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):  # no user name for this uid (a bare container)
        return "cli"


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def decide(cfg: Config, home: Path, model: str, ds: str, eval_set: dict) -> dict:
    """Score both aliases of ``model`` on ``eval_set``, move ``champion`` if the challenger wins, tag the decision.

    A challenger with no evaluation on record, or that fails to load or score, is refused (recorded, not raised).
    """
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
    result = {"model": name, "ds": ds, "metric": metric, "challenger": {"version": chal.version}}
    promoted, delta = False, None
    if champ is not None and champ.version == chal.version:
        reason = f"challenger v{chal.version} already is the champion"
    elif not evaluated(chal):
        reason = (f"refused: challenger v{chal.version} has no evaluation on record (tag {EVAL_TAG} missing or "
                  f"eval.status={chal.tags.get('eval.status')!r}); a version becomes champion only after the "
                  "pipeline's evaluate stage scored it")
    else:
        try:
            chal_m = score_topk(mlflow.pyfunc.load_model(f"models:/{name}@{CHALLENGER}"), *args)
        except Exception as exc:  # noqa: BLE001 - any failure to load or score refuses the challenger
            chal_m, reason = None, (f"refused: challenger v{chal.version} failed to load or score on ds={ds}: "
                                    f"{type(exc).__name__}: {exc}")
        if chal_m is not None:
            result["challenger"].update(chal_m)
            if champ is None:
                promoted = True
                reason = f"no champion yet; challenger v{chal.version} has {metric}={chal_m[metric]:.5f}"
            else:
                champ_m = score_topk(mlflow.pyfunc.load_model(f"models:/{name}@{CHAMPION}"), *args)
                result["champion"] = {"version": champ.version, **champ_m}
                delta = chal_m[metric] - champ_m[metric]
                promoted = delta > cfg.mlflow.promote_min_delta
                verb = "beats" if promoted else "does not beat"
                reason = (f"challenger v{chal.version} {verb} champion v{champ.version} on {metric} of ds={ds} test "
                          f"users ({chal_m[metric]:.5f} vs {champ_m[metric]:.5f}, delta {delta:+.5f}, "
                          f"required > {cfg.mlflow.promote_min_delta})")
    if promoted:
        c.set_registered_model_alias(name, CHAMPION, chal.version)
    before = str(champ.version) if champ else None
    decision = "promoted" if promoted else ("refused" if reason.startswith("refused") else "rejected")
    record_decision(c, name, chal.version, {
        "time": _now(), "action": "promote", "ds": ds, "metric": metric, "decision": decision, "reason": reason,
        "challenger": result["challenger"], "champion": result.get("champion", {"version": before} if champ else None),
        "delta": delta, "champion_before": before, "champion_after": str(chal.version) if promoted else before,
        "trigger": trigger()})
    return {**result, "promoted": promoted, "decision": decision, "reason": reason}


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




def _moves(d: dict) -> tuple[str | None, str | None]:
    """(champion before, champion after) of one recorded decision (records older than these fields included)."""
    before = d.get("champion_before", (d.get("champion") or {}).get("version"))
    after = d.get("champion_after", d["version"] if d.get("decision") == "promoted" else before)
    return (str(before) if before is not None else None), (str(after) if after is not None else None)


def rollback(cfg: Config, home: Path, model: str, to_version: str | int | None = None,
             reason: str | None = None) -> dict:
    """Move ``champion`` back: to ``to_version``, or to the champion the current one replaced when it was promoted
    (from the decisions on record). The target must be another registered version with its evaluation on record.
    Recorded like a promotion."""
    import mlflow

    c = client(cfg, home)
    name = model_name(cfg, model)
    try:
        champ = c.get_model_version_by_alias(name, CHAMPION)
    except mlflow.exceptions.MlflowException:
        raise LookupError(f"registered model '{name}' has no '{CHAMPION}' to roll back; promote one first") from None
    if to_version is None:
        # the champion its promotion replaced (rollbacks are skipped: rolling back twice goes further back)
        for d in reversed(decisions(cfg, home, model)):
            before, after = _moves(d)
            if d.get("action", "promote") == "promote" and d["decision"] == "promoted" and after == str(champ.version):
                if before is not None:
                    to_version = before
                break
        if to_version is None:
            raise LookupError(f"no earlier champion of '{name}' on record before v{champ.version}; "
                              "name the version to go back to with --to-version N")
    to_version = str(to_version)
    if to_version == str(champ.version):
        raise ValueError(f"v{to_version} already is the champion of '{name}'")
    try:
        target = c.get_model_version(name, to_version)
    except mlflow.exceptions.MlflowException:
        raise ValueError(f"registered model '{name}' has no version {to_version}; "
                         f"see `recpipe promote --history --model {model}`") from None
    if not evaluated(target):
        raise ValueError(f"v{to_version} of '{name}' has no evaluation on record (tag {EVAL_TAG}); "
                         "champion only moves to an evaluated version")
    metric = cfg.mlflow.promote_metric
    tag = f"eval.full.{metric.replace('@', '_')}"
    why = reason.strip() if reason and reason.strip() else "no reason given"
    text = f"rollback: champion v{champ.version} -> v{to_version} ({why})"
    c.set_registered_model_alias(name, CHAMPION, to_version)
    record_decision(c, name, to_version, {
        "time": _now(), "action": "rollback", "ds": target.tags.get("recpipe.ds"), "metric": metric,
        "decision": "rolled_back", "reason": text,
        "challenger": {"version": to_version, **({metric: float(target.tags[tag])} if tag in target.tags else {})},
        "champion": {"version": champ.version,
                     **({metric: float(champ.tags[tag])} if tag in (champ.tags or {}) else {})},
        "delta": None, "champion_before": str(champ.version), "champion_after": to_version, "trigger": trigger()})
    return {"model": name, "from_version": str(champ.version), "to_version": to_version, "reason": text}


def history_lines(cfg: Config, home: Path, model: str) -> list[str]:
    """One line per recorded decision, oldest first: time, action, versions, metric values, delta, result, reason,
    trigger."""
    out = []
    for d in decisions(cfg, home, model):
        metric = d.get("metric", "")
        chal, champ = d.get("challenger") or {}, d.get("champion") or {}
        _, after = _moves(d)

        def fmt(m: dict, metric: str = metric) -> str:
            return f"v{m.get('version')}" + (f" {metric}={m[metric]:.5f}" if metric in m else "")

        delta = d.get("delta")
        if delta is None and d.get("action", "promote") == "promote" and metric in chal and metric in champ:
            delta = chal[metric] - champ[metric]  # a record from before ``delta`` was kept (same users, same day)
        out.append(f"{d.get('time', '?')}  {d.get('action', 'promote'):8s} {d['decision']:11s} "
                   f"{'target' if d.get('action') == 'rollback' else 'challenger'} {fmt(chal)}  "
                   f"champion {fmt(champ) if champ else 'none'}  delta {'-' if delta is None else f'{delta:+.5f}'}  "
                   f"champion now v{after}  ds={d.get('ds')}  by {d.get('trigger', '?')}\n    reason: {d['reason']}")
    return out


def challenger_ds(cfg: Config, home: Path, model: str) -> str | None:
    """The day the current challenger was registered from (its ``recpipe.ds`` tag), if any."""
    return challenger_day(client(cfg, home), model_name(cfg, model))


def promote(cfg: Config, home: Path, model: str, ds: str | None) -> dict:
    """Promote ``model``'s challenger if it beats the champion on ``ds`` (None: latest successful run).

    Returns ``{"model", "ds", "metric", "challenger", ["champion"], "promoted", "reason"}``.
    """
    ds = ds or challenger_ds(cfg, home, model) or latest_successful_ds(home)
    return decide(cfg, home, model, ds, eval_set(cfg, home, ds))


def promote_task(model: str, ds: str | None = None, config: str | None = None,
                 overrides: list[str] | None = None, home: str | None = None, action: str = "promote",
                 to_version: str | None = None, reason: str | None = None) -> dict:
    """Airflow's entry point: ``action`` is ``promote`` or ``rollback`` (to ``to_version``, empty = the previous
    champion); empty ``ds``/``config``/``home`` mean the defaults; returns a small JSON-safe dict."""
    cfg = load_config(config or None, list(overrides or []))
    if action == "rollback":
        return rollback(cfg, resolve_home(home), model, to_version or None, reason or None)
    if action != "promote":
        raise ValueError(f"action must be 'promote' or 'rollback', not {action!r}")
    return promote(cfg, resolve_home(home), model, ds or None)
