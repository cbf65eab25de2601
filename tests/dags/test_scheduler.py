"""A real Airflow deployment runs the nightly DAG: PostgreSQL (started here, in a temporary folder) holds Airflow's
metadata and MLflow's backend store; an API server, a scheduler (LocalExecutor) and a DAG processor run as separate
processes; ``airflow backfill create`` queues two synthetic days and the scheduler runs them; then
``airflow dags trigger promote_model`` promotes through the same scheduler. The deployment is
``infra/airflow/local_stack.py`` (``make airflow``), the one the README documents.

This is the suite's one run of the whole nightly pipeline: the end-to-end checks (summary and report shape, no
secret anywhere, the CLI's backfill, promotion and serving from the registry) read what it wrote. ``test_dags.py``
checks the DAGs' shape and runs the promote DAG's rollback with ``dag.test()``. The LLM behind ``describe`` is an
OpenAI-compatible server on 127.0.0.1 (``tests/llm_server.py``; the real SmolLM2 describes in
``test_llm_stages.py``), reached with an API key that must never be written anywhere.
"""
from __future__ import annotations

import importlib.util
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipelines import cli
from tests.llm_server import LocalLLMServer

REPO = Path(__file__).resolve().parents[2]
DAYS = ["2026-01-01", "2026-01-02"]  # two: a day, then a larger one whose training is killed
LLM_KEY, SEARCH_KEY = "sk-e2e-llm-marker-51d0", "tvly-e2e-search-marker-8c2e"
MODELS = ("popularity", "wals", "sasrec", "grasp", "llmrec")
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


TRAINING_TI = ("SELECT ti.id::text, ti.try_number, ti.state FROM task_instance ti JOIN dag_run r ON ti.dag_id = r.dag_id "
               "AND ti.run_id = r.run_id WHERE r.dag_id = 'nightly_refresh' AND ti.task_id = 'train_sequential' "
               "AND r.logical_date::date = %s")


def _kill_in_training(stack, home: Path, ds: str, timeout_s: float) -> dict:
    """Once day ``ds``'s train_sequential task has checkpointed SASRec's first epoch, SIGKILL the Airflow worker
    process running it (titled ``airflow worker -- <task instance id>``), as the kernel's OOM killer or a lost node
    would. Returns what was killed, or why nothing was (the test that reads it fails with that)."""
    import os
    import signal

    deadline, ckpts = time.time() + timeout_s, home / "checkpoints" / "train_sequential" / ds
    while not any(f.read_text().strip() == "epoch1" for f in ckpts.glob("sasrec-*/latest")):
        if time.time() > deadline:
            return {"error": f"no first-epoch checkpoint under {ckpts} in {timeout_s:.0f} s"}
        time.sleep(0.1)
    rows = _query(stack, TRAINING_TI, ds)
    if not rows:
        return {"error": f"no train_sequential task instance for {ds}"}
    ti, tries, _ = rows[0]
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and f"airflow worker -- {ti}" in (proc / "cmdline").read_text(errors="replace"):
                os.kill(int(proc.name), signal.SIGKILL)
                return {"pid": int(proc.name), "ti": ti, "try": tries}
        except OSError:
            continue
    return {"error": f"no process titled 'airflow worker -- {ti}' (state {rows[0][2]}): the task ended first?"}


@pytest.fixture(scope="module")
def deployment(tmp_path_factory, tiny_llm_dir):
    from tests.conftest import SMALL_SHOP, small_llmrec

    root = tmp_path_factory.mktemp("airflow_deployment")
    # backfills and triggers only: no scheduled run of today competes with them on 2 cores; both API keys set to
    # markers (the secret scan below)
    stack = _stack_module().LocalStack(root / "stack", parallelism=2, extra_env={
        "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False", "RECPIPE_LLM_API_KEY": LLM_KEY,
        "RECPIPE_SEARCH_API_KEY": SEARCH_KEY, "AIRFLOW__CORE__DEFAULT_TASK_RETRY_DELAY": "2"})
    home = root / "home"
    t0 = time.perf_counter()
    with LocalLLMServer() as llm:
        overrides = [*SMALL_SHOP, "describe.backend=openai", f"describe.openai.base_url={llm.base_url}", "describe.openai.model=m",
                     "describe.max_items=4", "describe.max_users=4", "train_sequential.train.epochs=2",
                     "train_sequential.distributed.threads=1",
                     *small_llmrec(tiny_llm_dir)]
        try:
            stack.up()
            up_s = time.perf_counter() - t0
            stack.airflow("dags", "reserialize")
            stack.airflow("dags", "unpause", "nightly_refresh")
            stack.airflow("backfill", "create", "--dag-id", "nightly_refresh", "--from-date", DAYS[0], "--to-date",
                          DAYS[-1], "--dag-run-conf",
                          json.dumps({"home": str(home), "config": "", "overrides": overrides}))
            killed = _kill_in_training(stack, home, DAYS[1], timeout_s=900)
            states = _wait_runs(stack, "nightly_refresh", len(DAYS), timeout_s=1200)
            print(f"\nscheduler: stack up in {up_s:.0f} s, two days in {time.perf_counter() - t0 - up_s:.0f} s")
            yield {"stack": stack, "home": home, "states": states, "overrides": overrides, "llm": llm,
                   "killed": killed}
        finally:
            pids = dict(stack.pids)
            stack.down(remove_data=True)
    assert pids and not any(stack._alive(p) for p in pids.values())   # every process it started has stopped
    with socket.socket() as s, pytest.raises(OSError):
        s.settimeout(2)
        s.connect(("127.0.0.1", stack.pg_port))                        # and the database server too


@pytest.fixture
def tracking(deployment, monkeypatch):
    """This process talks to the deployment's MLflow store, as its tasks do."""
    monkeypatch.setenv("RECPIPE_MLFLOW_TRACKING_URI", deployment["stack"].db_url("mlflow"))
    return deployment["stack"].db_url("mlflow")


def _summary(home: Path, ds: str) -> dict:
    return json.loads((home / "runs" / ds / "summary.json").read_text())


def test_the_scheduler_ran_the_backfilled_days_on_postgres(deployment):
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
    assert summary["stages"]["describe"]["generated"] + summary["stages"]["describe"]["cached"] == 8
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


def test_a_worker_killed_in_training_was_retried_resumed_and_ended_as_an_undisturbed_day(deployment, tmp_path):
    """Day two's (the last day's) train_sequential worker was SIGKILLed after SASRec's first epoch (reliability issue, part three, 5):
    the scheduler retried the task, the retry resumed from the checkpoint, the day ended success, and each model's
    epochs, valid NDCG@10 and vectors equal those of the same stage run undisturbed on a copy of that day."""
    import shutil

    import numpy as np

    stack, home, ds, killed = deployment["stack"], deployment["home"], DAYS[1], deployment["killed"]
    assert "error" not in killed, killed
    [(_, tries, state)] = _query(stack, TRAINING_TI, ds)                # (each try has its own instance id)
    assert (state, tries) == ("success", killed["try"] + 1), (killed, tries, state)
    rec = json.loads((home / "runs" / ds / "stages" / "train_sequential.json").read_text())["models"]
    assert any(m.get("resumed_from_epoch", 0) >= 1 for m in rec.values()), rec
    ref = tmp_path / "undisturbed"                     # hard links: every write of a stage is a rename of a new file
    subprocess.run(["cp", "-al", str(home), str(ref)], check=True)
    shutil.rmtree(ref / "checkpoints" / "train_sequential" / ds)
    shutil.rmtree(ref / "runs" / ds / "train_sequential")
    sets = [a for kv in deployment["overrides"] for a in ("--set", kv)]
    run = subprocess.run([sys.executable, "-m", "pipelines.cli", "stage", "train_sequential", "--home", str(ref),
                          "--ds", ds, *sets], capture_output=True, text=True, timeout=600, cwd=REPO)
    assert run.returncode == 0, run.stderr[-2000:]
    undisturbed = json.loads((ref / "runs" / ds / "stages" / "train_sequential.json").read_text())["models"]
    for name, m in rec.items():
        for key in ("best_epoch", "epochs_run", "best_valid_NDCG@10"):
            assert m[key] == undisturbed[name][key], (name, key)
        va, vb = (np.load(h / "runs" / ds / "train_sequential" / name / "vectors.npz") for h in (home, ref))
        assert all(np.allclose(va[k], vb[k], rtol=0, atol=1e-4) for k in va.files), name


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


def test_no_secret_reaches_a_file_the_database_or_a_log_line(deployment):
    """Both keys were set for every task and the LLM key was sent to the server; nothing the deployment wrote holds
    either: the home (tables, records, caches, MLflow artifacts), Airflow's task and process logs, and PostgreSQL's
    own files (Airflow's metadata and MLflow's store)."""
    stack, home = deployment["stack"], deployment["home"]
    assert f"Bearer {LLM_KEY}" in deployment["llm"].behaviour.auth                # it was used
    places = [home, stack.root, stack.pgdata]
    for key in (LLM_KEY, SEARCH_KEY):
        leaked = [str(p) for root in places for p in root.rglob("*") if p.is_file() and key.encode() in p.read_bytes()]
        assert not leaked, (key, leaked)


def test_summary_has_documented_shape(deployment):
    from pipelines.graph import ORDER

    s = _summary(deployment["home"], DAYS[0])
    assert set(s) >= {"ds", "dataset", "status", "stages", "tables", "metrics", "mlflow"}
    assert s["status"] == "success" and s["ds"] == DAYS[0] and s["dataset"] == "synthetic"
    assert list(s["stages"]) == list(ORDER)
    assert {"generated", "cached", "failed"} <= set(s["stages"]["describe"])
    # 8 described (a retried try, which Airflow may make, finds the first try's in the cache)
    assert s["stages"]["describe"]["generated"] + s["stages"]["describe"]["cached"] == 8
    assert all({"seconds", "rows_out"} <= set(v) for v in s["stages"].values())
    t = s["tables"]
    assert t["train"] + t["valid"] + t["test"] == t["interactions"] - s["stages"]["split"].get("interactions_dropped", 0)
    assert t["valid"] == t["test"] == t["user_map"]
    for model in MODELS:
        m = s["metrics"][model]
        assert {"HR@10", "NDCG@10", "MRR", "HR@5", "NDCG@20"} <= set(m["full"]) and "NDCG@10" in m["sampled100"]
        assert set(m["slices"]) == {"short_history", "tail_items"}
    # the synthetic shop is learnable: WALS and the sequential models (its category-following sessions) beat
    # popularity clearly
    for model in ("wals", "sasrec", "grasp"):
        assert s["metrics"][model]["full"]["NDCG@10"] > 1.5 * s["metrics"]["popularity"]["full"]["NDCG@10"], model
    assert s["stages"]["train_sequential"]["models"]["grasp"]["text_source"] == "descriptions"
    assert {m["name"] for m in s["mlflow"]["models"]} == set(MODELS)
    assert all("challenger" in m["aliases"] for m in s["mlflow"]["models"])
    assert (deployment["home"] / "runs" / DAYS[0] / "ndcg_by_slice.png").exists()


def test_report_shows_every_models_figures_and_the_days_side_by_side(deployment):
    home, ds = deployment["home"], DAYS[-1]
    s = _summary(home, ds)
    report = (home / "runs" / ds / "report.md").read_text()
    assert report.startswith(f"# recpipe report: synthetic, ds={ds}")
    full = report.split("## Full ranking (user history excluded)")[1].split("## 100 sampled negatives")[0]
    sampled = report.split("## 100 sampled negatives")[1]
    for model in MODELS:
        for section, proto in ((full, "full"), (sampled, "sampled100")):
            m = s["metrics"][model][proto]
            row = f"| {model} | all | {m['users']} | {m['HR@5']:.4f} | {m['HR@10']:.4f} | {m['HR@20']:.4f} | "
            assert row in section, (model, proto)
            assert f"| {m['NDCG@10']:.4f} |" in section.split(row)[1].splitlines()[0]
            tail = s["metrics"][model]["slices"]["tail_items"][proto]
            assert f"| {model} | tail_items | {tail['users']} | {tail['HR@5']:.4f} |" in section
    assert "![NDCG@10 by slice](ndcg_by_slice.png)" in report
    # the day-over-day view (the days ran side by side: earlier days appear once they had finished)
    view = report.split("## Day over day")[1]
    w = s["metrics"]["wals"]["full"]["NDCG@10"]
    assert f"| {ds} |" in view and f"{w:.4f}" in view.split(f"| {ds} |")[1].splitlines()[0]
    assert "What was recomputed:" in view and "Promotion decisions on these days:" in view


def test_cli_backfill_skips_done_days(deployment, capsys):
    home = deployment["home"]
    before = (home / "runs" / DAYS[0] / "summary.json").stat().st_mtime_ns
    assert cli.main(["backfill", "--home", str(home), "--from", DAYS[0], "--to", DAYS[0]]) == 0
    assert "already successful; skipping" in capsys.readouterr().out
    assert (home / "runs" / DAYS[0] / "summary.json").stat().st_mtime_ns == before


def test_cli_promote_then_serve_from_registry_in_fresh_process(deployment, tracking, capsys):
    home = deployment["home"]
    assert cli.main(["promote", "--home", str(home), "--model", "wals"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("PROMOTED: no champion yet")
    served = json.loads(out.split("\n", 1)[1])["challenger"]["NDCG@10"]  # via models:/wals@challenger
    assert served == pytest.approx(_summary(home, DAYS[-1])["metrics"]["wals"]["full"]["NDCG@10"], abs=1e-6)
    assert cli.main(["promote", "--home", str(home), "--model", "wals"]) == 0
    assert "already is the champion" in capsys.readouterr().out
    code = (
        "import mlflow, pandas as pd, json, sys\n"
        f"mlflow.set_tracking_uri({tracking!r})\n"
        "m = mlflow.pyfunc.load_model('models:/wals@champion')\n"
        "out = m.predict(pd.DataFrame({'user_id': ['U000001', 'nobody']}), params={'k': 5})\n"
        "print(json.dumps({'lens': [len(x) for x in out['item_ids']], 'known': out['known'].tolist()}))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    assert res == {"lens": [5, 5], "known": [True, False]}
