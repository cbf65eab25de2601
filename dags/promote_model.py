"""Manual, gated promotion of a registered model's ``challenger`` to ``champion`` (``recpipe promote`` in Airflow),
or a rollback of ``champion`` to an earlier version (``recpipe rollback``), chosen by the ``action`` param.

Thin by design: the one task is one call into ``pipelines.promotion.promote_task``, imported inside the task.
"""
from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import Param, dag, task


@dag(
    dag_id="promote_model",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    default_args={"retries": 1, "retry_delay": timedelta(minutes=2)},
    tags=["recpipe", "promotion"],
    params={
        "action": Param("promote", type="string", enum=["promote", "rollback"],
                        description="promote: gated challenger -> champion; rollback: champion back to an earlier "
                                    "version"),
        "model": Param("wals", type="string", description="registered model name, e.g. wals or popularity"),
        "ds": Param("", type="string",
                    description="evaluation day YYYY-MM-DD; empty means the latest successful nightly run"),
        "config": Param("", type="string",
                        description="YAML config path; empty means the embedded default pipelines/conf/synthetic.yaml"),
        "overrides": Param([], type="array", items={"type": "string"},
                           description="config overrides, each 'key=value' (as recpipe --set)"),
        "home": Param("", type="string", description="RECPIPE_HOME; empty means $RECPIPE_HOME, else ./.recpipe"),
        "to_version": Param("", type="string",
                            description="rollback only: the version to make champion; empty means the previous one"),
        "reason": Param("", type="string", description="rollback only: why (kept with the decision)"),
    },
)
def promote_model():
    """
    ### Promote a model

    Trigger by hand (with conf `{"model": "wals"}`, say). Loads the model's `challenger` and `champion`
    aliases from the MLflow registry, scores both on the same test users of `ds` (the latest successful
    nightly run when `ds` is empty) and moves `champion` to the challenger only if it wins on
    `mlflow.promote_metric` by more than `mlflow.promote_min_delta`. The decision and its reason are written
    as tags on the challenger version and returned (XCom). No logical date is needed.

    With `{"action": "rollback", "model": "wals"}` it moves `champion` back to the champion the current one
    replaced (or to `to_version`), recording `reason`; `recpipe promote --history --model wals` lists every
    decision.
    """

    @task
    def promote(params: dict | None = None) -> dict:
        from pipelines.promotion import promote_task

        return promote_task(params["model"], params["ds"], params["config"], params["overrides"], params["home"],
                            params.get("action", "promote"), params.get("to_version"), params.get("reason"))

    promote()


promote_model()
