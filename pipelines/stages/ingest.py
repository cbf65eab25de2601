"""Stage (pipelines layer): ``ingest`` runs the Spark job ``jobs/ingest.py`` (staged interactions, items, users)."""
from __future__ import annotations

import dataclasses

from jobs import ingest as job
from jobs import warehouse
from pipelines.context import StageContext, StageResult


def run(ctx: StageContext) -> StageResult:
    params = {**dataclasses.asdict(ctx.cfg.data), "synthetic": dataclasses.asdict(ctx.cfg.synthetic)}
    counts = job.run(str(ctx.home), ctx.ds, params, *ctx.spark_args())
    return StageResult(counts["interactions"],
                       {t: str(warehouse.partition_path(ctx.home, t, ctx.ds, job.STAGING)) for t in counts},
                       tables=counts)
