"""Stage (pipelines layer): ``split`` runs the Spark job ``jobs/split.py`` (leave-one-out ``sequences``, id maps and,
with ``split.cold_items``, the ``cold_items`` table)."""
from __future__ import annotations

import dataclasses

from jobs import split as job
from jobs import warehouse
from pipelines.context import StageContext, StageResult


def run(ctx: StageContext) -> StageResult:
    counts = job.run(str(ctx.home), ctx.ds, dataclasses.asdict(ctx.cfg.split), *ctx.spark_args())
    tables = ("sequences", "user_map", "item_map") + (("cold_items",) if "cold_items" in counts else ())
    cold = {k: v for k, v in counts.items() if k.startswith(("cold_", "warm_"))}
    details = {"cold": {"by": ctx.cfg.split.cold_by, "share": ctx.cfg.split.cold_items,
                        "seed": ctx.cfg.split.cold_seed, **cold}} if cold else {}
    return StageResult(counts["sequences"], {t: str(warehouse.partition_path(ctx.home, t, ctx.ds)) for t in tables},
                       tables=counts, details=details)
