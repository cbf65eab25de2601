"""Batch scoring (``recpipe score``): a registered model, named ``NAME[@alias]``, scores a user file on the
configured Spark master through MLflow's ``spark_udf`` (``jobs/score.py``); the output is a Parquet folder."""
from __future__ import annotations

import re
from pathlib import Path

from pipelines import registry
from pipelines.config import Config
from pipelines.context import spark_args

BAD_REQUEST = re.compile(r"Bad request: [^\n]*")


def model_uri(cfg: Config, home: Path, spec: str) -> str:
    """``models:/<registered name>@<alias>`` for ``NAME[@alias]`` (alias: champion), checked to exist."""
    name, _, alias = spec.partition("@")
    alias = alias or registry.CHAMPION
    db = registry.sqlite_file(registry.tracking_uri(cfg, home))
    if db is not None and not db.exists():  # (opening it would create an empty store in the wrong place)
        raise LookupError(f"{db} does not exist: no model is registered in the home {home}; give the home the "
                          "pipeline ran in (--home or RECPIPE_HOME) or its tracking URI (mlflow.tracking_uri)")
    c = registry.client(cfg, home)
    registered = registry.model_name(cfg, name)
    try:
        c.get_model_version_by_alias(registered, alias)
    except Exception:  # noqa: BLE001 - MLflow raises its own RestException/MlflowException kinds for "not found"
        raise LookupError(f"no version of the registered model '{registered}' has the alias '{alias}' in "
                          f"{registry.tracking_uri(cfg, home)}: run the pipeline (challenger) or promote one "
                          f"(recpipe promote --model {name}), or name the alias: --model {name}@challenger") from None
    return f"models:/{registered}@{alias}"


def score(cfg: Config, home: Path, spec: str, users: str, out: str, k: int | None = None,
          partitions: int = 0) -> dict:
    """Score every row of ``users`` with the model ``spec``; ``out`` is written whole or not at all."""
    from jobs import score as job

    uri = model_uri(cfg, home, spec)
    k = int(k if k is not None else cfg.mlflow.top_k)
    try:
        counts = job.run(uri, users, out, k, *spark_args(cfg), partitions=partitions)
    except Exception as exc:  # a request the model refuses fails in the executors: its one line, not Spark's trace
        found = BAD_REQUEST.search(str(exc))
        if found:
            raise ValueError(f"{users}: {found.group(0)}") from None
        raise
    return {"model": uri, "users": users, "out": out, "k": k, **counts}
