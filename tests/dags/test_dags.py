"""DAG integrity (fast) and ``dag.test()`` runs of the promote DAG (slow); the nightly DAG runs on a real scheduler in
``test_scheduler.py``.

Airflow reads its settings (``AIRFLOW_HOME``, the metadata DB, the DAGs folder) once, at import; so everything
that needs a particular Airflow environment runs in a subprocess with that environment, never in the test
process (whose Airflow, if any other test imported it first, would be configured for somewhere else).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DAGS = REPO / "dags"
HEAVY = ("pyspark", "torch", "mlflow", "great_expectations", "implicit", "transformers", "deepspeed")
MARK = "@@RESULT@@"

# Loads the DAG folder with DagBag, reports what the integrity tests check, as JSON on the last line.
INTEGRITY_SCRIPT = textwrap.dedent("""
    import json, sys
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=sys.argv[1])
    dags = {}
    for dag_id, dag in bag.dags.items():
        try:
            dag.check_cycle()
            cycle = None
        except Exception as exc:
            cycle = f"{type(exc).__name__}: {exc}"
        dags[dag_id] = {
            "cycle": cycle,
            "tags": sorted(dag.tags),
            "schedule": str(dag.schedule) if dag.schedule is not None else None,
            "timetable": type(dag.timetable).__name__,
            "catchup": dag.catchup,
            "max_active_runs": dag.max_active_runs,
            "params": sorted(dag.params),
            "doc_md": bool(dag.doc_md),
            "tasks": {t.task_id: {"retries": t.retries, "downstream": sorted(t.downstream_task_ids), "pool": t.pool}
                      for t in dag.topological_sort()},
            "order": [t.task_id for t in dag.topological_sort()],
        }
    heavy = sorted({m.split(".")[0] for m in sys.modules} & set(sys.argv[2].split(",")))
    ours = sorted(m for m in sys.modules if m.split(".")[0] in ("pipelines", "jobs", "features", "models"))
    print("@@RESULT@@" + json.dumps({"import_errors": bag.import_errors, "dags": dags, "heavy": heavy, "ours": ours}))
""")

# Runs one DAG with dag.test() in this (fresh) interpreter; retries off so a failure surfaces at once.
DAG_TEST_SCRIPT = textwrap.dedent("""
    import json, sys
    import pendulum
    from airflow.dag_processing.dagbag import DagBag

    dag_file, dag_id, logical_date, conf = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
    bag = DagBag(dag_folder=dag_file)
    assert not bag.import_errors, bag.import_errors
    dag = bag.dags[dag_id]
    for t in dag.tasks:
        t.retries = 0
    dr = dag.test(logical_date=pendulum.parse(logical_date) if logical_date else None, run_conf=conf)
    tis = {ti.task_id: str(ti.state) for ti in dr.get_task_instances()}
    print("@@RESULT@@" + json.dumps({"state": str(dr.state), "run_id": dr.run_id, "tasks": tis}))
""")


def airflow_env(airflow_home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW") and k != "RECPIPE_HOME"}
    env.update({
        "AIRFLOW_HOME": str(airflow_home),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS),
        "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
        "SPARK_LOCAL_IP": "127.0.0.1",
        "GX_ANALYTICS_ENABLED": "false",
        "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p),
        "PYTHONDONTWRITEBYTECODE": "1",
    })
    return env


def run_script(script: str, args: list[str], env: dict[str, str], timeout: int) -> dict:
    proc = subprocess.run([sys.executable, "-c", script, *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(MARK)]
    assert proc.returncode == 0 and lines, (
        f"exit {proc.returncode}\n--- stdout (tail)\n{proc.stdout[-6000:]}\n--- stderr (tail)\n{proc.stderr[-6000:]}")
    return json.loads(lines[-1][len(MARK):])


# --------------------------------------------------------------------------- integrity (fast, no DB)

@pytest.fixture(scope="module")
def bag(tmp_path_factory) -> dict:
    return run_script(INTEGRITY_SCRIPT, [str(DAGS), ",".join(HEAVY)],
                      airflow_env(tmp_path_factory.mktemp("airflow_parse")), timeout=120)


def test_dags_import_cleanly(bag):
    assert bag["import_errors"] == {}
    assert {"nightly_refresh", "promote_model"} <= set(bag["dags"])


def test_no_cycles_retries_tags_docs(bag):
    for dag_id, d in bag["dags"].items():
        assert d["cycle"] is None, d["cycle"]
        assert d["tags"] and "recpipe" in d["tags"], dag_id
        assert d["doc_md"], f"{dag_id} has no doc_md"
        for task_id, t in d["tasks"].items():
            assert t["retries"] >= 1, f"{dag_id}.{task_id} has no retries"


def test_nightly_is_the_stage_graph(bag):
    from pipelines.graph import ORDER, STAGES

    d = bag["dags"]["nightly_refresh"]
    assert sorted(d["order"]) == sorted(ORDER)
    expected = {s.name: sorted(t.name for t in STAGES if s.name in t.upstream) for s in STAGES}
    assert {t: v["downstream"] for t, v in d["tasks"].items()} == expected  # the DAG is the stage table
    assert {"describe", "wals"} <= set(expected["split"]) and expected["register"] == []  # branches after split
    for task, downs in expected.items():  # the local runner's order is a valid order of the graph
        assert all(ORDER.index(task) < ORDER.index(x) for x in downs)
    assert d["tags"] == ["nightly", "recpipe"]
    assert d["schedule"] == "@daily" and d["timetable"] == "CronTriggerTimetable"  # data interval = logical date
    assert d["catchup"] is True and d["max_active_runs"] == 1
    assert d["params"] == ["config", "home", "overrides"]


def test_llm_work_has_its_own_declared_pool(bag):
    pools = json.loads((REPO / "infra" / "airflow" / "pools.json").read_text())
    from pipelines.graph import STAGES

    tasks = bag["dags"]["nightly_refresh"]["tasks"]
    assert {t: v["pool"] for t, v in tasks.items()} == {s.name: s.pool for s in STAGES}
    assert tasks["describe"]["pool"] == tasks["embed"]["pool"] == "recpipe_llm"
    assert tasks["train_sequential"]["pool"] == "recpipe_train"
    assert tasks["split"]["pool"] == "default_pool"
    assert {t["pool"] for t in tasks.values()} - {"default_pool"} <= set(pools)


def test_promote_dag_shape(bag):
    d = bag["dags"]["promote_model"]
    assert d["schedule"] is None
    assert d["tags"] == ["promotion", "recpipe"]
    assert list(d["tasks"]) == ["promote"]
    assert d["params"] == ["action", "config", "ds", "home", "model", "overrides", "reason", "to_version"]


def test_parsing_dags_imports_nothing_heavy(bag):
    assert bag["heavy"] == [], f"parsing dags/ imported {bag['heavy']}: move those imports inside the tasks"
    assert bag["ours"] == ["pipelines", "pipelines.graph"], f"parsing dags/ imported {bag['ours']}"


# --------------------------------------------------------------------------- dag.test() end to end (slow)

@pytest.fixture(scope="module")
def airflow_db(tmp_path_factory) -> dict[str, str]:
    """A migrated metadata DB in a fresh AIRFLOW_HOME (dag.test() needs one); returns the subprocess env."""
    env = airflow_env(tmp_path_factory.mktemp("airflow_home"))
    airflow = Path(sys.executable).with_name("airflow")
    proc = subprocess.run([str(airflow), "db", "migrate"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=180)
    assert proc.returncode == 0, f"airflow db migrate failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    proc = subprocess.run([str(airflow), "pools", "import", str(REPO / "infra" / "airflow" / "pools.json")], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"airflow pools import failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return env


@pytest.mark.slow  # a migrated Airflow database and four airflow CLI calls: about 25 s
def test_the_readme_airflow_sequence_finds_and_unpauses_the_dag(airflow_db):
    """The documented Airflow commands (docs/operations.md, linked from the README), in their order, up to unpausing
    (the backfill needs a running scheduler): after them `airflow dags list` shows the DAG and unpause finds it
    (without `dags reserialize` both found nothing)."""
    import re
    import shlex

    block = (REPO / "docs" / "operations.md").read_text().split("## Airflow", 1)[1].split("```sh", 1)[1].split("```", 1)[0]
    airflow = Path(sys.executable).with_name("airflow")
    ran = []
    for line in block.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line.startswith(".venv/bin/airflow"):
            continue
        args = shlex.split(line)[1:]
        if args[0] in ("backfill", "connections") or args[:2] == ["dags", "trigger"]:
            continue
        proc = subprocess.run([str(airflow), *args], cwd=REPO, env=airflow_db, capture_output=True, text=True,
                              timeout=300)
        assert proc.returncode == 0, f"{line}:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
        ran.append(" ".join(args[:2]))
    assert ran == ["db migrate", "pools import", "dags reserialize", "dags unpause"], ran
    out = subprocess.run([str(airflow), "dags", "list", "-o", "plain"], cwd=REPO, env=airflow_db,
                         capture_output=True, text=True, timeout=300).stdout
    assert re.search(r"\bnightly_refresh\b", out) and re.search(r"\bpromote_model\b", out), out[-2000:]


@pytest.mark.slow
def test_promote_dag_rolls_back(airflow_db, tmp_path):
    """The promote DAG's rollback action on a real registry (its promote action: test_scheduler.py): promote v1,
    promote v2, rollback through the DAG; champion ends on v1 and the registry holds the three decisions, the last
    with its reason and the DAG run that made it."""
    from pipelines import promotion, registry
    from pipelines.config import load_config
    from tests.registry_home import BETTER, DS, WORSE, register, write_day

    home = write_day(tmp_path / "home")
    cfg = load_config(None, [])
    v1 = register(home, DS, WORSE)
    promotion.promote(cfg, home, "wals", None)
    v2 = register(home, DS, BETTER)
    promotion.promote(cfg, home, "wals", None)
    conf = {"action": "rollback", "model": "wals", "ds": "", "home": str(home), "config": "", "overrides": [],
            "to_version": "", "reason": "v2 misbehaves in serving"}
    result = run_script(DAG_TEST_SCRIPT, [str(DAGS / "promote_model.py"), "promote_model", "", json.dumps(conf)],
                        airflow_db, timeout=300)
    assert result["state"] == "success", result["tasks"]
    log = promotion.decisions(cfg, home, "wals")
    assert [(d["action"], d["decision"], d["champion_after"]) for d in log] == [
        ("promote", "promoted", v1), ("promote", "promoted", v2), ("rollback", "rolled_back", v1)]
    assert log[2]["trigger"].startswith("airflow:promote_model/") and "v2 misbehaves in serving" in log[2]["reason"]
    assert str(registry.client(cfg, home).get_model_version_by_alias("wals", "champion").version) == v1
