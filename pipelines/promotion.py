"""Gated promotion of a registered model's ``challenger`` to ``champion``, on one day's test users.

``recpipe promote`` calls ``promote``; the ``promote_model`` Airflow DAG calls ``promote_task``.
The decision itself (scoring both aliases on the same users, the delta rule, the tags) is
``pipelines.registry.promote``; this module only picks the day and builds its evaluation set.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from pipelines.config import Config, load_config


def latest_successful_ds(home: Path) -> str:
    """The newest ``ds`` whose ``runs/<ds>/summary.json`` says ``success``; LookupError if none."""
    from pipelines import runner

    done = sorted(p.parent.name for p in (home / "runs").glob("*/summary.json") if runner.is_done(home, p.parent.name))
    if not done:
        raise LookupError(f"no successful run under {home / 'runs'}")
    return done[-1]


def eval_set(cfg: Config, home: Path, ds: str) -> dict:
    """Test targets of ``ds``: ``{"user_ids", "exclude", "targets"}`` (one list entry per test user).

    ``exclude[i]`` holds user ``i``'s earlier items (train + valid), the target never.
    """
    from pipelines.stages import StageContext, load_eval_data

    data, user_ids, item_ids = load_eval_data(StageContext(cfg, ds, home))
    hist = data.history("test")
    users = [u for u in range(data.n_users) if data.test[u] > 0]
    ids = np.asarray(item_ids, dtype=object)
    return {"user_ids": [user_ids[u] for u in users],
            "exclude": [[i for i in ids[hist.indices[hist.indptr[u]:hist.indptr[u + 1]]] if i != ids[data.test[u]]]
                        for u in users],
            "targets": [ids[data.test[u]] for u in users]}


def promote(cfg: Config, home: Path, model: str, ds: str | None) -> dict:
    """Promote ``model``'s challenger if it beats the champion on ``ds`` (None: latest successful run).

    Returns the registry's result: ``{"model", "ds", "metric", "challenger", ["champion"], "promoted", "reason"}``.
    """
    from pipelines import registry

    ds = ds or latest_successful_ds(home)
    return registry.promote(cfg, home, model, ds, eval_set(cfg, home, ds))


def promote_task(model: str, ds: str | None = None, config: str | None = None,
                 overrides: list[str] | None = None, home: str | None = None) -> dict:
    """Airflow's entry point: empty ``ds``/``config``/``home`` mean the defaults; returns a small JSON-safe dict."""
    from pipelines.runner import resolve_home

    cfg = load_config(config or None, list(overrides or []))
    return promote(cfg, resolve_home(home), model, ds or None)
