"""MLflow: one run per ``ds``, models registered under alias ``challenger`` (the promotion decision that moves
``champion`` is ``pipelines.promotion``).

Tracking and registry default to SQLite at ``<home>/mlflow/mlflow.db`` with artifacts under
``<home>/mlflow/artifacts``; ``mlflow.tracking_uri`` (or ``$RECPIPE_MLFLOW_TRACKING_URI``) points elsewhere (a
tracking server, a PostgreSQL database) without code changes.

A SQLite store is created by the first client that opens it (MLflow's alembic migrations), and two processes
creating one store at once (two days started together on a new home) broke it for good: one process's migration
copied a table while the other's renamed it, leaving ``_alembic_tmp_*`` tables that failed every later open. So a
SQLite store is opened for the first time in a process under a lock beside it (``<store>.lock``): one process
creates it, the others wait and find it made. A store found half-migrated (leftover ``_alembic_tmp_*`` tables, or
a schema version behind this MLflow's) is repaired under the same lock, keeping every run and registered version:
a copy of it is taken first (``<store>.before-repair-<time>``), the leftover tables are dropped and the migration
is re-run; a store that cannot be repaired is refused with a message naming the file and the recovery.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import functools
import json
import logging
import os
import sqlite3
import sys
import warnings
from pathlib import Path
from typing import Any

from jobs.warehouse import partition_path
from pipelines.config import Config, to_dict
from pipelines.graph import STAGES
from pipelines.locks import waiting

CHALLENGER, CHAMPION = "challenger", "champion"
SERVING_CODE = Path(__file__).with_name("serving.py")
SECRET_MARKERS = ("key", "token", "secret", "password")


def configured_uri(cfg: Config) -> str:
    """``mlflow.tracking_uri``, else ``$RECPIPE_MLFLOW_TRACKING_URI`` (a deployment's tracking server or database,
    set once for every task), else empty: SQLite under the home."""
    return cfg.mlflow.tracking_uri or os.environ.get("RECPIPE_MLFLOW_TRACKING_URI", "")


def tracking_uri(cfg: Config, home: Path) -> str:
    return configured_uri(cfg) or f"sqlite:///{(home / 'mlflow' / 'mlflow.db').resolve()}"


def client(cfg: Config, home: Path):
    """Configure MLflow for ``home`` and return a client (quiet: no alembic or registry chatter)."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    import mlflow
    from mlflow import MlflowClient

    for name in ("alembic", "mlflow"):
        logging.getLogger(name).setLevel(logging.ERROR)
    (home / "mlflow").mkdir(parents=True, exist_ok=True)
    uri = tracking_uri(cfg, home)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    artifacts = (home / "mlflow" / "artifacts").resolve().as_uri()
    db = sqlite_file(uri)
    with store_lock(db):  # the store's tables and the experiment are created once, by one process
        if db is not None:
            check_store(db)
        exp = mlflow.get_experiment_by_name(cfg.mlflow.experiment)  # the tracking store: created on first use
        if exp is None:
            mlflow.create_experiment(cfg.mlflow.experiment, artifact_location=artifacts)
        elif not configured_uri(cfg) and exp.artifact_location != artifacts and \
                exp.artifact_location.endswith("/mlflow/artifacts"):
            relocate(home / "mlflow" / "mlflow.db", exp.artifact_location, artifacts)
        mlflow.set_experiment(cfg.mlflow.experiment)
        c = MlflowClient(uri, uri)
        c.search_registered_models(max_results=1)  # the registry store too
    return c


class StoreDamaged(RuntimeError):
    """A SQLite MLflow store that is half-migrated (or from another MLflow) and could not be repaired."""


TMP_PREFIX = "_alembic_tmp_"


def sqlite_file(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` tracking URI; None for any other store (a server, PostgreSQL)."""
    if not uri.startswith("sqlite:///") or ":memory:" in uri:
        return None
    return Path(uri[len("sqlite:///"):].split("?", 1)[0])


def store_lock(db: Path | None):
    """The lock beside a SQLite store (``<store>.lock``) that its creation and repair are done under."""
    if db is None:
        return contextlib.nullcontext()
    return waiting(db.with_name(db.name + ".lock"), f"opening the MLflow store {db}")


@functools.cache
def _head() -> str:
    from mlflow.store.db.utils import _get_latest_schema_revision

    return _get_latest_schema_revision()


def _state(db: Path) -> tuple[set[str], list[str]]:
    """(tables, schema versions recorded in ``alembic_version``) of the store ``db``."""
    with contextlib.closing(sqlite3.connect(db, timeout=60)) as con:
        tables = {r[0] for r in con.execute("select name from sqlite_master where type = 'table'")}
        versions = [r[0] for r in con.execute("select version_num from alembic_version")] \
            if "alembic_version" in tables else []
    return tables, versions


def _count(db: Path, tables: set[str]) -> dict[str, int]:
    with contextlib.closing(sqlite3.connect(db, timeout=60)) as con:
        return {t: con.execute(f'select count(*) from "{t}"').fetchone()[0]
                for t in ("experiments", "runs", "registered_models", "model_versions") if t in tables}


def check_store(db: Path) -> None:
    """Repair a half-migrated SQLite store (see the module's doc) or raise ``StoreDamaged`` naming it and the
    recovery; a new, empty or sound store is left to MLflow. Call under ``store_lock(db)``."""
    if not db.exists() or db.stat().st_size == 0:
        return
    try:
        tables, versions = _state(db)
    except sqlite3.DatabaseError as exc:
        raise StoreDamaged(_refusal(db, f"it cannot be read as a SQLite database ({exc})",
                                    f"sqlite3 {db} .recover | sqlite3 {db}.recovered && mv {db} {db}.damaged && "
                                    f"mv {db}.recovered {db}")) from None
    leftovers = sorted(t for t in tables if t.startswith(TMP_PREFIX))
    if not leftovers and (versions == [_head()] or not tables - {"alembic_version"} or "alembic_version" not in tables):
        return  # sound, new, or created but not yet migrated (MLflow migrates it from the start)
    what = (f"leftover tables {', '.join(leftovers)}" if leftovers else "no leftover tables") + \
        f"; schema version {', '.join(versions) or 'none'}, this MLflow's is {_head()}"
    from mlflow.store.db.utils import _get_alembic_config

    if len(versions) != 1 or not _known(_get_alembic_config(""), versions[0]):
        raise StoreDamaged(_refusal(db, f"its schema version cannot be migrated from ({what}): it was written by "
                                        "another MLflow version or its migration record was lost",
                                    f"open it with the MLflow version that wrote it (this one is {_version()}) and "
                                    f"run {_mlflow_bin()} db upgrade sqlite:///{db}"))
    backup = db.with_name(f"{db.name}.before-repair-{dt.datetime.now():%Y%m%d-%H%M%S}")
    with contextlib.closing(sqlite3.connect(db)) as src, contextlib.closing(sqlite3.connect(backup)) as dst:
        src.backup(dst)
    before = _count(db, tables)
    try:
        _repair(db, tables, leftovers)
        tables_after, versions_after = _state(db)
        after = _count(db, tables_after)
        if versions_after != [_head()] or any(t.startswith(TMP_PREFIX) for t in tables_after) or \
                any(after.get(k, 0) < n for k, n in before.items()):
            raise RuntimeError(f"after the repair: schema version {versions_after}, rows {after} (before {before})")
    except Exception as exc:  # noqa: BLE001 (anything: the store is put back as it was, and named)
        with contextlib.closing(sqlite3.connect(backup)) as src, contextlib.closing(sqlite3.connect(db)) as dst:
            src.backup(dst)
        drops = "; ".join(f"DROP TABLE {t}" for t in leftovers)
        raise StoreDamaged(_refusal(db, f"it was left half-migrated ({what}) and the repair failed "
                                        f"({type(exc).__name__}: {str(exc).splitlines()[0][:300]})",
                                    (f"sqlite3 {db} '{drops}' && " if drops else "") +
                                    f"{_mlflow_bin()} db upgrade sqlite:///{db}")) from None
    how = ("left half-migrated, as two processes creating it at once leave it" if leftovers else
           "behind this MLflow's schema")
    print(f"  WARNING: the MLflow store {db} was {how} ({what}): repaired ("
          f"{'leftover tables dropped, ' if leftovers else ''}migrated to {_head()}; "
          f"{before.get('model_versions', 0)} registered versions and {before.get('runs', 0)} runs kept); "
          f"the store as it was is at {backup}", file=sys.stderr, flush=True)


def _known(config, revision: str) -> bool:
    from alembic.script import ScriptDirectory

    try:
        return ScriptDirectory.from_config(config).get_revision(revision) is not None
    except Exception:  # noqa: BLE001 (alembic's lookup errors have no common base worth naming)
        return False


def _repair(db: Path, tables: set[str], leftovers: list[str]) -> None:
    """Drop each leftover ``_alembic_tmp_<t>`` (its table ``<t>`` is intact: the copy was not swapped in), or rename
    it to ``<t>`` when ``<t>`` is gone (the swap stopped between the drop and the rename), then migrate."""
    import sqlalchemy
    from mlflow.store.db.utils import _upgrade_db

    with contextlib.closing(sqlite3.connect(db, timeout=60)) as con, con:
        for t in leftovers:
            base = t[len(TMP_PREFIX):]
            con.execute(f'drop table "{t}"' if base in tables else f'alter table "{t}" rename to "{base}"')
    engine = sqlalchemy.create_engine(f"sqlite:///{db}")
    try:
        _upgrade_db(engine)
    finally:
        engine.dispose()


def _mlflow_bin() -> Path:
    return Path(sys.executable).with_name("mlflow")


def _version() -> str:
    from importlib.metadata import version

    return f"MLflow {version('mlflow')}, schema {_head()}"


def _refusal(db: Path, why: str, fix: str) -> str:
    return (f"The MLflow store {db} cannot be opened: {why}. It is left as it was, with every run and registered "
            f"version in it. To recover keeping them: stop every run of this home, copy the file aside "
            f"(cp {db} {db}.bak), then run: {fix}; then run again. Deleting the store would lose the registered "
            "versions and the promotion history; a new store elsewhere (mlflow.tracking_uri) leaves this one as it is")


def relocate(db: Path, old: str, new: str) -> int:
    """A home that was moved or copied: rewrite every MLflow path under ``old`` (the artifact root the home's
    database was created with, an absolute URI) to ``new``, so new artifacts land in this home and earlier ones are
    read from it, not from the original. The home's own SQLite store only; returns the values rewritten."""
    import sqlite3
    from urllib.parse import unquote, urlparse

    pairs = [(old, new), (unquote(urlparse(old).path), unquote(urlparse(new).path))]  # URIs and plain paths
    n = 0
    with sqlite3.connect(db) as con:
        tables = [r[0] for r in con.execute("select name from sqlite_master where type = 'table'")]
        for t in tables:
            cols = [r[1] for r in con.execute(f'pragma table_info("{t}")')
                    if any(k in r[2].upper() for k in ("CHAR", "TEXT", "CLOB"))]
            for col in cols:
                for a, b in pairs:
                    n += con.execute(f'update "{t}" set "{col}" = ? || substr("{col}", ?) '
                                     f'where substr("{col}", 1, ?) = ?', (b, len(a) + 1, len(a), a)).rowcount
    print(f"  this home was moved or copied: {n} MLflow paths rewritten from {old} to {new}", flush=True)
    return n


def flat_params(d: dict, prefix: str = "") -> dict[str, str]:
    """Flatten the config for ``log_params``; secret-looking keys are never logged."""
    out: dict[str, str] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if any(m in k.lower() for m in SECRET_MARKERS):
            continue
        if isinstance(v, dict) and v:
            out.update(flat_params(v, key + "."))
        else:
            out[key] = json.dumps(v) if isinstance(v, (list, tuple, dict)) else str(v)
    return out


def flat_metrics(metrics: dict) -> dict[str, float]:
    """``{model: {"full": {"NDCG@10": x}}}`` -> ``{"model.full.NDCG_10": x}`` (MLflow key charset)."""
    out: dict[str, float] = {}

    def walk(node: Any, key: str) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{key}.{k}" if key else str(k))
        elif isinstance(node, (int, float)) and not isinstance(node, bool):
            out[key.replace("@", "_")] = float(node)

    walk(metrics, "")
    return out


def model_name(cfg: Config, model: str) -> str:
    return f"{cfg.mlflow.model_prefix}{model}"


def decisions(cfg: Config, home: Path, model: str) -> list[dict]:
    """Every recorded promotion decision of ``model`` (``pipelines.promotion`` writes them), oldest first."""
    c = client(cfg, home)
    tags = c.get_registered_model(model_name(cfg, model)).tags or {}
    return [json.loads(v) for k, v in sorted(tags.items()) if k.startswith("promotion.") and k.split(".")[1].isdigit()]


def log_run(cfg: Config, ds: str, home: Path, run_dir: Path, metrics: dict, model_dirs: dict[str, Path]) -> dict:
    """Create the run for ``ds`` (replacing an earlier run of the same day), register every model."""
    import mlflow

    c = client(cfg, home)
    exp = mlflow.get_experiment_by_name(cfg.mlflow.experiment)
    for old in c.search_runs([exp.experiment_id], f"tags.`recpipe.ds` = '{ds}' and tags.`recpipe.dataset` = '{cfg.dataset}'"):
        c.delete_run(old.info.run_id)  # one live run per ds: a re-run of a day replaces it
    models = []
    with mlflow.start_run(run_name=f"{cfg.dataset}-{ds}",
                          tags={"recpipe.ds": ds, "recpipe.dataset": cfg.dataset}) as run:
        mlflow.log_params(flat_params(to_dict(cfg)))
        mlflow.log_metrics(flat_metrics(metrics))
        for f in ("summary.json", "report.md", "config.yaml", "validation.json", "metrics.json"):
            if (run_dir / f).exists():
                mlflow.log_artifact(str(run_dir / f))
        for png in sorted(run_dir.glob("*.png")):
            mlflow.log_artifact(str(png), "plots")
        for table in ("user_factors", "item_factors"):  # WALS factors, keyed by the original ids
            part = partition_path(home, table, ds)
            if part.exists():
                mlflow.log_artifacts(str(part), f"factors/{table}")
        for name, mdir in model_dirs.items():
            models.append(_register(c, cfg, ds, name, mdir, metrics.get(name, {}), forward_dir(run_dir, name),
                                    foldin_settings(cfg, name)))
    return {"run_id": run.info.run_id, "experiment": cfg.mlflow.experiment,
            "tracking_uri": tracking_uri(cfg, home), "models": models}


def signature(top_k: int):
    """Input ``user_id`` (+ optional ``history`` and ``exclude`` item ids), output the top-k lists (+
    ``unknown_items`` with a history, ``reason`` when asked), params ``k`` and ``reasons``.

    MLflow passes ``params`` to ``predict`` only when the signature declares them, and checks the input columns and
    their types against it (a missing ``user_id`` or a ``history`` that is not a list: HTTP 400 before the model).
    """
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Array, ColSpec, ParamSchema, ParamSpec, Schema

    inputs = Schema([ColSpec("string", "user_id"), ColSpec(Array("string"), "history", required=False),
                     ColSpec(Array("string"), "exclude", required=False)])
    outputs = Schema([ColSpec("string", "user_id"), ColSpec(Array("string"), "item_ids"),
                      ColSpec(Array("double"), "scores"), ColSpec("boolean", "known"),
                      ColSpec("long", "unknown_items", required=False), ColSpec("string", "reason", required=False)])
    return ModelSignature(inputs, outputs, ParamSchema([ParamSpec("k", "long", top_k),
                                                        ParamSpec("reasons", "boolean", False)]))


def forward_dir(run_dir: Path, name: str) -> Path | None:
    """The folder ``serving.save_forward`` wrote beside the vectors of the trained model ``name`` (SASRec, GRASP)
    in the day's run folder, if any: logged with the model so a request's history runs the forward pass."""
    for stage in STAGES:
        d = run_dir / stage.name / name / "forward"
        if name in stage.models and (d / "forward.json").exists():
            return d
    return None


def foldin_settings(cfg: Config, name: str) -> dict | None:
    """WALS's settings for folding a request's history in (``serving``); None for every other model."""
    return {"regularization": cfg.wals.regularization, "alpha": cfg.wals.alpha} if name == "wals" else None


def challenger_day(c, registered: str) -> str | None:
    """The ``recpipe.ds`` of the version holding ``challenger`` (None: no challenger yet). Days of a backfill run side
    by side (Airflow's backfill runs up to its own ``--max-active-runs`` days at once, the DAG's limit aside), so the
    last to register is not always the newest."""
    from mlflow.exceptions import MlflowException

    try:
        return c.get_model_version_by_alias(registered, CHALLENGER).tags.get("recpipe.ds")
    except MlflowException:
        return None


def _register(c, cfg: Config, ds: str, name: str, mdir: Path, metrics: dict, forward: Path | None = None,
              foldin: dict | None = None) -> dict:
    """Log ``mdir`` (``serving.save_scorer``) as a pyfunc version of ``name`` under alias challenger, with the
    ``forward`` folder (a sequential model's weights) or WALS's ``foldin`` settings when given."""
    import mlflow

    registered = model_name(cfg, name)
    meta = json.loads((mdir / "meta.json").read_text())
    top_k = max(1, min(cfg.mlflow.top_k, len(meta["item_ids"]) - 1))  # the default k is one the model accepts
    artifacts = {"model": str(mdir), **({"forward": str(forward)} if forward is not None else {})}
    needs = ["mlflow", "numpy", "pandas"] + (["torch", "safetensors"] if forward is not None else []) \
        + (["torch", "scipy"] if foldin else [])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        info = mlflow.pyfunc.log_model(name=name, python_model=str(SERVING_CODE), artifacts=artifacts,
                                       model_config={"threads": cfg.mlflow.serve_threads,
                                                     **({"foldin": foldin} if foldin else {})},
                                       registered_model_name=registered, signature=signature(top_k),
                                       pip_requirements=list(dict.fromkeys(needs)))
    version = str(info.registered_model_version)
    tags = {"recpipe.ds": ds, "recpipe.dataset": cfg.dataset}
    key = meta.get("model_key")
    if key:  # the trained weights' key: what the day's reasons table names in its ``model`` column
        tags["recpipe.model_key"] = key
    if meta.get("day_one"):  # how it scores items it has no trained row for (chosen on the cold-valid users)
        tags["recpipe.day_one"] = meta["day_one"]
    for key in ("NDCG@10", "HR@10"):
        if key in metrics.get("full", {}):
            tags[f"eval.full.{key.replace('@', '_')}"] = f"{metrics['full'][key]:.6f}"
    # what promotion checks before champion may move here: the evaluate stage's figures are on record
    tags["eval.status"] = "ok" if "NDCG@10" in metrics.get("full", {}) else "missing"
    for k, v in tags.items():
        c.set_model_version_tag(registered, version, k, v)
    newer = challenger_day(c, registered)
    if newer is None or newer <= ds:  # a backfilled or retried older day never takes challenger from a newer one
        c.set_registered_model_alias(registered, CHALLENGER, version)
    aliases = sorted(c.get_model_version(registered, version).aliases)
    return {"name": registered, "version": version, "aliases": aliases}
