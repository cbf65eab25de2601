"""Spark job (spark-submit entry point) for the split: ``interactions`` -> leave-one-out ``sequences``, id maps.

Users are numbered ``0..U-1`` and items ``1..N`` (0 is the padding index of sequence models), both in
sorted order of their source ids. Run alone:
``spark-submit jobs/split.py --home H --ds 2026-01-01 --params '{"kcore": 0, "min_interactions": 3}'``.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from features import split as S
from features.errors import DataError
from jobs.warehouse import base_parser, check_spark, partition_path, spark_session, write_json, write_spark


def run(home: str, ds: str, params: dict, master: str | None = None, spark_conf: dict | None = None) -> dict[str, int]:
    from pyspark.sql import functions as F

    src = partition_path(home, "interactions", ds)
    if not src.exists():
        raise DataError(str(src), "no interactions partition for this ds.", "run the ingest stage first.")
    spark = spark_session("recpipe-split", master, spark_conf)
    inter = spark.read.parquet(str(src))
    n_in = inter.count()
    users_in = inter.select("user_id").distinct().count()
    core = S.kcore(inter, int(params.get("kcore", 0)))
    ordered = S.order_events(core, bool(params.get("dedupe_consecutive", False)))
    labelled = S.assign_split(ordered, int(params.get("min_interactions", 3)),
                              params.get("short_policy", "drop")).localCheckpoint()
    user_map = S.id_map(labelled, "user_id", "user_idx", 0).localCheckpoint()
    item_map = S.id_map(labelled, "item_id", "item_idx", 1).localCheckpoint()
    seq = S.to_sequences(labelled, user_map, item_map).localCheckpoint()
    if seq.isEmpty():
        raise DataError(str(src), f"no user has at least {params.get('min_interactions', 3)} interactions "
                        "after filtering.", "lower split.min_interactions / split.kcore or ingest more data.")
    frames = {"sequences": seq, "user_map": user_map, "item_map": item_map}
    for name, df in frames.items():
        check_spark(name, df)
    counts = {name: write_spark(df, home, name, ds) for name, df in frames.items()}
    by_split = {r["split"]: r["count"] for r in seq.groupBy("split").count().collect()}
    counts.update({s: int(by_split.get(s, 0)) for s in ("train", "valid", "test")})
    counts["users_dropped"] = users_in - counts["user_map"]
    counts["interactions_dropped"] = n_in - counts["sequences"]
    counts["users_evaluated"] = int(seq.filter(F.col("split") == "test").count())
    return counts


def main(argv: list[str] | None = None) -> int:
    args = base_parser(__doc__.splitlines()[0]).parse_args(argv)
    try:
        counts = run(args.home, args.ds, json.loads(args.params), args.master, json.loads(args.spark_conf))
    except DataError as exc:
        print(f"split failed: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(counts))
    write_json(Path(args.home) / "runs" / args.ds / "jobs" / "split.json", counts)
    return 0


if __name__ == "__main__":
    sys.exit(main())
