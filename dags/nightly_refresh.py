"""The nightly refresh: one task per pipeline stage, for one logical date ``ds``.

Thin by design (see DESIGN.md, house style): every task body is one call into ``pipelines.runner.run_task``,
imported inside the task so that parsing this file never loads Spark, torch or MLflow. Only the small dicts of
output paths that ``run_task`` returns travel between tasks (XCom); the data stays under ``RECPIPE_HOME``.
"""
from __future__ import annotations

import pendulum
from airflow.sdk import Param, dag, task

from pipelines.graph import STAGES, Secret

# The stage table (names, upstream stages, pools, secrets) is pipelines/graph.py, shared with the local runner;
# it is standard library only, so importing it keeps parsing light. Pools: `airflow pools import
# infra/airflow/pools.json` creates them.
PARAMS = {
    "config": Param("", type="string",
                    description="YAML config path; empty means the embedded default pipelines/conf/synthetic.yaml"),
    "overrides": Param([], type="array", items={"type": "string"},
                       description="config overrides, each 'key=value' (as recpipe --set), e.g. wals.factors=64"),
    "home": Param("", type="string", description="RECPIPE_HOME; empty means $RECPIPE_HOME, else ./.recpipe"),
}


@dag(
    dag_id="nightly_refresh",
    schedule="@daily",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=True,
    max_active_runs=1,
    default_args={"retries": 2},  # after Airflow's [core] default_task_retry_delay (300 s unless a deployment sets it)
    tags=["recpipe", "nightly"],
    params=PARAMS,
)
def nightly_refresh():
    """
    ### Nightly refresh

    Runs `ingest >> validate >> split >> [wals, describe >> embed >> neighbours >> train_sequential] >> train_llmrec >>
    evaluate >> register` for one day, `ds` (`recpipe run --ds DS` runs the same stages in one process; both read the
    stage table `pipelines/graph.py`). `describe` and `embed` run in the pool `recpipe_llm`, `train_sequential` in
    `recpipe_train` and `train_llmrec` in `recpipe_llmrec` (`airflow pools import infra/airflow/pools.json`); with
    `describe.backend=openai` the server's key comes from the connection `recpipe_llm` (its password) or
    the environment, and is never logged.

    **Data interval.** `@daily` on Airflow 3 with the default `create_cron_data_intervals=False` is a
    `CronTriggerTimetable`: a run's data interval is its logical date itself (start = end = midnight UTC),
    so **`ds` is the run's logical date**, and the scheduled run for `ds` starts at 00:00 UTC *of* `ds`.
    The stages build the shop "as of `ds`" (the synthetic source includes `ds`'s own events); a real feed that
    lands during `ds` is therefore not complete when the scheduled run starts. For "yesterday's data"
    semantics use `schedule=CronDataIntervalTimetable("@daily", timezone="UTC")`: the interval is then the
    previous day, the run starts when it ends, and `ds` is that previous day. (The deployment setting
    `[scheduler] create_cron_data_intervals = True` flips every `@daily` DAG to that meaning at parse time.)

    **Backfills.** `catchup=True` from 2026-01-01 and `max_active_runs=1`: missed scheduled days run one at a time,
    in order (each day's stages overwrite that day's partitions, so re-running a day is safe).
    `airflow backfill create --dag-id nightly_refresh --from-date ... --to-date ...` queues more; a backfill runs up
    to its own `--max-active-runs` days at once (default 10): pass `--max-active-runs 1` with incremental refresh.
    A manual trigger must carry a logical date (the tasks need `ds`).

    **Params** (trigger conf overrides them): `config` (YAML path, empty = the synthetic default),
    `overrides` (list of `key=value`), `home` (empty = `$RECPIPE_HOME` or `./.recpipe`).

    **Retries.** Each task is retried twice, after `[core] default_task_retry_delay` (300 s by default). A retried
    task resumes what its killed try left: training from its last epoch checkpoint, describe and embed from their
    caches.

    Output: `$RECPIPE_HOME/runs/<ds>/summary.json`, MLflow run and model versions under alias `challenger`.
    Promotion to `champion` is the separate, manually triggered `promote_model` DAG.
    """

    done: dict = {}
    for stage in STAGES:  # each task gets its upstream tasks' output paths
        done[stage.name] = _stage_task(stage.name, stage.pool, stage.secrets)([done[u] for u in stage.upstream])


def _export(secret: Secret) -> None:
    """Copy the password of the connection ``secret.conn_id``, if defined, into the task's environment."""
    import os

    from airflow.sdk import BaseHook
    from airflow.sdk.exceptions import AirflowNotFoundException

    try:
        conn = BaseHook.get_connection(secret.conn_id)
    except AirflowNotFoundException:
        return  # no connection: the value, if any, comes from the worker's environment
    if conn.password:
        os.environ.setdefault(secret.env, conn.password)


def _stage_task(stage: str, pool: str, secrets: tuple[Secret, ...]):
    """The task for one stage: its body is one call into ``pipelines.runner.run_task``."""

    @task(task_id=stage, pool=pool)
    def run_stage(upstream: list | None = None, ds: str | None = None, params: dict | None = None) -> dict:
        from pipelines.runner import run_task

        for secret in secrets:
            _export(secret)
        return run_task(stage, ds, params["config"], params["overrides"], params["home"])

    return run_stage


nightly_refresh()
