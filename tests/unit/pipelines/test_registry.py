"""pipelines.registry: what is logged to MLflow (no secret-looking key ever), metric names MLflow accepts."""
from __future__ import annotations

import dataclasses

import pytest

from pipelines.config import load_config
from pipelines.registry import flat_metrics, flat_params


def test_flat_params_flattens_and_drops_secret_looking_keys_at_any_depth():
    params = flat_params({"a": 1, "api_key": "sk-1", "nested": {"Token": "t", "deep": {"password": "p", "ok": [1, 2]},
                                                                "empty": {}}, "client_secret": "s", "name": "x"})
    assert params == {"a": "1", "nested.deep.ok": "[1, 2]", "nested.empty": "{}", "name": "x"}


def test_the_config_never_logs_its_openai_key_setting():
    cfg = load_config(None, ["describe.backend=openai", "describe.openai.model=m"])
    params = flat_params(dataclasses.asdict(cfg))
    assert params["describe.openai.model"] == "m" and params["train_sequential.sasrec.dropout"] == "0.3"
    assert not [k for k in params if "key" in k.lower()]


def test_flat_metrics_names():
    m = {"wals": {"full": {"NDCG@10": 0.25, "users": 3}, "slices": {"tail_items": {"full": {"HR@5": 1}}},
                  "flag": True, "label": "x"}}
    assert flat_metrics(m) == {"wals.full.NDCG_10": 0.25, "wals.full.users": 3.0,
                               "wals.slices.tail_items.full.HR_5": 1.0}


def test_a_copied_home_writes_and_reads_its_own_artifacts(tmp_path, capsys):
    """MLflow stores the artifact root as an absolute path: a copied home wrote new artifacts into the original
    (reliability issue, part two, 8). The copy's store is rewritten to its own folder on first use."""
    import shutil

    import mlflow

    from pipelines.registry import client

    cfg = load_config(None, [])
    first, copy = tmp_path / "a" / "home", tmp_path / "b" / "home"
    client(cfg, first)
    with mlflow.start_run() as run:
        mlflow.log_text("day one", "note.txt")
    shutil.copytree(first, copy)
    before = {p.relative_to(first) for p in first.rglob("*")}
    c = client(cfg, copy)
    assert "MLflow paths rewritten" in capsys.readouterr().out
    assert mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/note.txt") == "day one"
    assert c.get_run(run.info.run_id).info.artifact_uri.startswith((copy / "mlflow").resolve().as_uri())
    with mlflow.start_run() as run2:
        mlflow.log_text("day two", "note.txt")
    assert (copy / "mlflow" / "artifacts").resolve().as_uri() in run2.info.artifact_uri
    assert {p.relative_to(first) for p in first.rglob("*")} == before              # the original is untouched
    client(cfg, first)                                                          # and still its own
    assert "rewritten" not in capsys.readouterr().out


def _open_new_homes(homes: list[str], barrier, out) -> None:
    """One of the racing processes: at the barrier, open each new home's registry; put ``(home, "ok" | error)``."""
    from pathlib import Path

    import mlflow  # noqa: F401  (imported before the barrier: the race is in the store's creation, not imports)

    from pipelines.registry import client

    cfg = load_config(None, [])
    for home in homes:
        barrier.wait(timeout=120)
        try:
            client(cfg, Path(home))
            out.put((home, "ok"))
        except Exception as exc:  # noqa: BLE001 (whatever it is, the test reports it)
            out.put((home, f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"))


@pytest.mark.slow  # two spawned processes with MLflow each: about 20 s, out of make test-fast
def test_two_processes_opening_a_new_homes_registry_at_once_both_succeed(tmp_path):
    """Two first runs on a new home at once (issue 44, 1): both creating MLflow's SQLite store failed at register,
    and left `_alembic_tmp_*` tables that failed every later run of the home. Now one creates it under a lock
    beside it and the other waits. Three new homes in a row, the two processes released together at each (real
    processes, real MLflow): before the fix the first home already broke in most tries."""
    import multiprocessing
    from pathlib import Path

    from pipelines.registry import client

    ctx = multiprocessing.get_context("spawn")
    homes = [str(tmp_path / f"home{i}") for i in range(3)]
    barrier, out = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_open_new_homes, args=(homes, barrier, out)) for _ in range(2)]
    for p in procs:
        p.start()
    got = [out.get(timeout=300) for _ in range(2 * len(homes))]
    for p in procs:
        p.join(timeout=60)
    assert [p.exitcode for p in procs] == [0, 0]
    assert [r for r in got if r[1] != "ok"] == []
    cfg = load_config(None, [])
    for home in homes:                                                      # a later single open works
        c = client(cfg, Path(home))
        assert [e.name for e in c.search_experiments()].count(cfg.mlflow.experiment) == 1
        db = Path(home) / "mlflow" / "mlflow.db"
        import sqlite3

        with sqlite3.connect(db) as con:
            assert not con.execute("select name from sqlite_master where name like '\\_alembic\\_tmp\\_%' "
                                   "escape '\\'").fetchall()


OLD_REVISION = "a8c4a736bde6"  # where the race of issue 44 left a store: the next migration's copies half made


def _half_migrated_store(db) -> None:
    """A store as two racing creators left it: migrated up to OLD_REVISION, holding an experiment, a run with a
    metric and a registered model with two versions, plus `_alembic_tmp_latest_metrics`, made by hand."""
    import sqlite3

    import sqlalchemy
    from alembic import command
    from mlflow.store.db.utils import InitialBase, _get_alembic_config

    db.parent.mkdir(parents=True)
    engine = sqlalchemy.create_engine(f"sqlite:///{db}")
    InitialBase.metadata.create_all(engine)
    config = _get_alembic_config(f"sqlite:///{db}")
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, OLD_REVISION)
    engine.dispose()
    artifacts = (db.parent / "artifacts").resolve().as_uri()
    with sqlite3.connect(db) as con:
        con.execute("insert into experiments values (1, 'recpipe', ?, 'active')", (artifacts,))
        con.execute("insert into runs (run_uuid, name, status, start_time, lifecycle_stage, artifact_uri, "
                    "experiment_id, source_type, source_name, entry_point_name, user_id, source_version) values "
                    "('r1', 'day one', 'FINISHED', 1, 'active', ?, 1, 'LOCAL', '', '', 'u', '')", (artifacts + "/r1",))
        con.execute("insert into metrics values ('ndcg', 0.25, 1, 'r1', 0, 0)")
        con.execute("insert into latest_metrics values ('ndcg', 0.25, 1, 0, 0, 'r1')")
        con.execute("insert into registered_models values ('recpipe_wals', 1, 1, '')")
        for v in (1, 2):
            con.execute("insert into model_versions (name, version, creation_time, last_updated_time, current_stage, "
                        "source, run_id, status) values ('recpipe_wals', ?, 1, 1, 'None', 'file:///m', 'r1', 'READY')",
                        (v,))
        con.execute("insert into model_version_tags values ('recpipe.ds', '2026-01-01', 'recpipe_wals', 2)")
        con.execute("create table _alembic_tmp_latest_metrics as select * from latest_metrics")


def test_a_half_migrated_store_is_repaired_keeping_every_version(tmp_path, capsys):
    """A store left with `_alembic_tmp_*` tables failed every later open (`table _alembic_tmp_latest_metrics already
    exists`). Now it is repaired on open: the leftover dropped, the migration re-run, every run and version kept."""
    import sqlite3

    from pipelines.registry import client

    home = tmp_path / "home"
    db = home / "mlflow" / "mlflow.db"
    _half_migrated_store(db)
    cfg = load_config(None, [])
    c = client(cfg, home)
    err = capsys.readouterr().err
    assert f"the MLflow store {db.resolve()} was left half-migrated" in err and "_alembic_tmp_latest_metrics" in err
    assert "2 registered versions and 1 runs kept" in err
    assert [int(v.version) for v in c.search_model_versions("name = 'recpipe_wals'")] == [2, 1]
    assert c.get_model_version("recpipe_wals", "2").tags == {"recpipe.ds": "2026-01-01"}
    assert c.get_run("r1").data.metrics == {"ndcg": 0.25}
    assert len(list(db.parent.glob("mlflow.db.before-repair-*"))) == 1             # the store as it was, kept
    with sqlite3.connect(db) as con:
        assert not con.execute("select name from sqlite_master where name like '\\_alembic\\_tmp\\_%' "
                               "escape '\\'").fetchall()
    client(cfg, home).search_registered_models()                                 # a later open: nothing to do
    assert "WARNING" not in capsys.readouterr().err


def test_a_store_that_cannot_be_repaired_is_refused_naming_it_and_the_recovery(tmp_path):
    """A leftover table in a store whose schema version this MLflow does not know: left as it was, and the message
    names the file, what is wrong and the command that recovers it with its data."""
    import sqlite3

    import pytest

    from pipelines.registry import StoreDamaged, client

    home = tmp_path / "home"
    db = home / "mlflow" / "mlflow.db"
    _half_migrated_store(db)
    with sqlite3.connect(db) as con:
        con.execute("update alembic_version set version_num = 'ffffffffffff'")
    before = db.read_bytes()
    with pytest.raises(StoreDamaged) as err:
        client(load_config(None, []), home)
    msg = str(err.value)
    assert f"The MLflow store {db.resolve()} cannot be opened" in msg and "ffffffffffff" in msg
    assert "every run and registered version" in msg and "db upgrade sqlite:///" in msg and "\n" not in msg
    assert db.read_bytes() == before
