"""A real Airflow deployment runs the nightly DAG: PostgreSQL (started here, in a temporary folder) holds Airflow's
metadata and MLflow's backend store; an API server, a scheduler (LocalExecutor) and a DAG processor run as separate
processes; ``airflow backfill create`` queues three synthetic days and the scheduler runs them; then
``airflow dags trigger promote_model`` promotes through the same scheduler. The deployment is
``infra/airflow/local_stack.py`` (``make airflow``), the one the README documents.

This is the suite's one run of the nightly DAG (``test_dags.py`` checks its shape and runs the promote DAG with
``dag.test()``).
"""
from __future__ import annotations

import importlib.util
import json
import socket
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DAYS = ["2026-01-01", "2026-01-02", "2026-01-03"]
pytestmark = pytest.mark.slow


def _stack_module():
    spec = importlib.util.spec_from_file_location("local_stack", REPO / "infra" / "airflow" / "local_stack.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["local_stack"] = mod
    spec.loader.exec_module(mod)
    return mod


def _query(stack, sql: str, *args) -> list[tuple]:
    """Read Airflow's metadata database directly (an ``airflow`` CLI call costs seconds of CPU)."""
    import psycopg2

    con = psycopg2.connect(host="127.0.0.1", port=stack.pg_port, user="recpipe", dbname="airflow")
    try:
        with con.cursor() as cur:
            cur.execute(sql, args)
            return cur.fetchall()
    finally:
        con.close()


def _wait_runs(stack, dag_id: str, want: int, timeout_s: float) -> dict[str, str]:
    """Poll until ``want`` runs of ``dag_id`` succeeded or one failed (bounded); ``{run_id: state}``."""
    deadline, states = time.time() + timeout_s, {}
    while time.time() < deadline:
        states = dict(_query(stack, "SELECT run_id, state FROM dag_run WHERE dag_id = %s", dag_id))
        if "failed" in states.values() or (len(states) >= want and set(states.values()) == {"success"}):
            break
        time.sleep(5)
    return states


def _logs_tail(stack) -> str:
    logs = stack.root / "airflow" / "logs"
    files = sorted(logs.rglob("*.log"), key=lambda p: p.stat().st_mtime)[-3:] if logs.exists() else []
    return "\n".join(f"--- {f}\n{f.read_text(errors='replace')[-2000:]}" for f in files)


@pytest.fixture(scope="module")
def deployment(tmp_path_factory, smollm2_dir, tiny_llm_dir):
    from tests.conftest import small_llmrec

    root = tmp_path_factory.mktemp("airflow_deployment")
    # backfills and triggers only: no scheduled run of today competes with them on 2 cores
    stack = _stack_module().LocalStack(root / "stack", parallelism=2,
                                       extra_env={"AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False"})
    home = root / "home"
    overrides = [f"describe.model_path={smollm2_dir}", "describe.max_items=3", "describe.max_users=3",
                 "train_sequential.train.epochs=2", *small_llmrec(tiny_llm_dir)]
    t0 = time.perf_counter()
    try:
        stack.up()
        up_s = time.perf_counter() - t0
        stack.airflow("dags", "reserialize")
        stack.airflow("dags", "unpause", "nightly_refresh")
        stack.airflow("backfill", "create", "--dag-id", "nightly_refresh", "--from-date", DAYS[0], "--to-date",
                      DAYS[-1], "--dag-run-conf", json.dumps({"home": str(home), "config": "", "overrides": overrides}))
        states = _wait_runs(stack, "nightly_refresh", len(DAYS), timeout_s=1200)
        print(f"\nscheduler: stack up in {up_s:.0f} s, three days in {time.perf_counter() - t0 - up_s:.0f} s")
        yield {"stack": stack, "home": home, "states": states, "overrides": overrides}
    finally:
        pids = dict(stack.pids)
        stack.down(remove_data=True)
        assert pids and not any(stack._alive(p) for p in pids.values())   # every process it started has stopped
        with socket.socket() as s, pytest.raises(OSError):
            s.settimeout(2)
            s.connect(("127.0.0.1", stack.pg_port))                        # and the database server too


def test_the_scheduler_ran_three_backfilled_days_on_postgres(deployment):
    stack, home = deployment["stack"], deployment["home"]
    runs = dict(_query(stack, "SELECT logical_date, state FROM dag_run WHERE dag_id = 'nightly_refresh'"))
    assert {d.date().isoformat(): s for d, s in runs.items()} == {d: "success" for d in DAYS}, _logs_tail(stack)
    summaries = [json.loads((home / "runs" / ds / "summary.json").read_text()) for ds in DAYS]
    for ds, s in zip(DAYS, summaries, strict=True):
        assert s["status"] == "success" and s["ds"] == ds
        assert s["mlflow"]["tracking_uri"].startswith("postgresql")   # MLflow's store is the same server
    for a, b in zip(summaries, summaries[1:], strict=False):                         # each day of the synthetic shop is larger
        assert all(b["tables"][t] > a["tables"][t] for t in ("interactions", "items", "users"))
    from mlflow import MlflowClient

    uri = stack.db_url("mlflow")
    c = MlflowClient(tracking_uri=uri, registry_uri=uri)
    for model in ("popularity", "wals", "sasrec", "grasp", "llmrec"):
        assert sorted(v.tags["recpipe.ds"] for v in c.search_model_versions(f"name = '{model}'")) == DAYS
        assert c.get_model_version_by_alias(model, "challenger").tags["recpipe.ds"] == DAYS[-1]


def test_every_task_of_a_day_succeeded_and_reported_the_protocols_figures(deployment):
    from pipelines.graph import ORDER

    stack, home, ds = deployment["stack"], deployment["home"], DAYS[1]
    tasks = dict(_query(stack, "SELECT ti.task_id, ti.state FROM task_instance ti JOIN dag_run r ON "
                               "ti.dag_id = r.dag_id AND ti.run_id = r.run_id WHERE r.dag_id = 'nightly_refresh' "
                               "AND r.logical_date::date = %s", ds))
    assert tasks == {s: "success" for s in ORDER}
    summary = json.loads((home / "runs" / ds / "summary.json").read_text())
    assert list(summary["stages"]) == list(ORDER)
    assert summary["stages"]["describe"]["generated"] + summary["stages"]["describe"]["cached"] == 6
    assert summary["stages"]["neighbours"]["rows_out"] > 0
    assert summary["stages"]["train_sequential"]["models"]["grasp"]["epochs_run"] == 2
    assert {m["name"] for m in summary["mlflow"]["models"]} == {"popularity", "wals", "sasrec", "grasp", "llmrec"}
    # the figures the Airflow tasks reported are the protocol's figures for what they wrote, recomputed here
    from pipelines.config import load_config
    from pipelines.context import StageContext
    from pipelines.evaluation.data import eval_kwargs, load_eval_data, negatives_for
    from pipelines.evaluation.protocol import evaluate
    from pipelines.evaluation.scorers import model_zoo

    ctx = StageContext(load_config(None, deployment["overrides"]), ds, home)
    data, _, _ = load_eval_data(ctx)
    neg = negatives_for(ctx, data)
    zoo = model_zoo(ctx)
    assert list(zoo) == ["popularity", "wals", "sasrec", "grasp", "llmrec"]
    for name, factory in zoo.items():
        got = evaluate(factory(data)[0], data, neg, "test", **eval_kwargs(ctx.cfg))
        for protocol in ("full", "sampled100"):
            assert summary["metrics"][name][protocol] == pytest.approx(got[protocol], abs=1e-12), (name, protocol)
    assert summary["metrics"]["wals"]["full"]["NDCG@10"] > 1.5 * summary["metrics"]["popularity"]["full"]["NDCG@10"]


def test_the_promote_dag_triggered_on_the_scheduler_sets_champion(deployment):
    stack, home = deployment["stack"], deployment["home"]
    stack.airflow("dags", "unpause", "promote_model")
    conf = {"model": "popularity", "ds": "", "home": str(home), "config": "", "overrides": []}
    stack.airflow("dags", "trigger", "promote_model", "--conf", json.dumps(conf))
    states = _wait_runs(stack, "promote_model", 1, timeout_s=300)
    assert list(states.values()) == ["success"], (states, _logs_tail(stack))
    from mlflow import MlflowClient

    uri = stack.db_url("mlflow")
    c = MlflowClient(tracking_uri=uri, registry_uri=uri)
    champion = c.get_model_version_by_alias("popularity", "champion")
    assert champion.version == c.get_model_version_by_alias("popularity", "challenger").version
    assert champion.tags["recpipe.ds"] == DAYS[-1] and champion.tags["promotion.decision"] == "promoted"
    assert "no champion yet" in champion.tags["promotion.reason"]
    decision = json.loads(champion.tags["promotion.00001"])
    assert decision["trigger"].startswith("airflow:promote_model/manual__")
