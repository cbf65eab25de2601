"""Stage (pipelines layer): ``split`` runs the Spark job ``jobs/split.py`` (leave-one-out ``sequences``, id maps)."""
from __future__ import annotations

import dataclasses

from jobs import split as job
from jobs import warehouse
from pipelines.context import StageContext, StageResult


def run(ctx: StageContext) -> StageResult:
    counts = job.run(str(ctx.home), ctx.ds, dataclasses.asdict(ctx.cfg.split), *ctx.spark_args())
    tables = ("sequences", "user_map", "item_map")
    return StageResult(counts["sequences"], {t: str(warehouse.partition_path(ctx.home, t, ctx.ds)) for t in tables},
                       tables=counts)
