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
from jobs.warehouse import (
    base_parser,
    check_spark,
    partition_path,
    read_arrow,
    remove_partition,
    spark_session,
    write_json,
    write_spark,
)


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
    labelled, plain, cold = label(ordered, params)
    item_map = S.id_map(plain, "item_id", "item_idx", 1).localCheckpoint()  # cold items too: they are scored
    user_map = S.id_map(labelled, "user_id", "user_idx", 0).localCheckpoint()
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
    if cold is None:
        remove_partition(home, "cold_items", ds)  # a day re-run with the protocol off keeps no stale cold items
        return counts
    return {**counts, **cold_tables(home, ds, cold, item_map, plain, labelled)}


def label(ordered, params: dict):
    """``(labelled, plain, cold)``: the split's rows, the plain leave-one-out (the same rows when the cold-item
    protocol is off) and the cold items (``item_id, half``; None when off)."""
    n_min, policy = int(params.get("min_interactions", 3)), params.get("short_policy", "drop")
    plain = S.assign_split(ordered, n_min, policy).localCheckpoint()
    if float(params.get("cold_items", 0.0)) <= 0:
        return plain, plain, None
    cold = S.pick_cold(plain, float(params["cold_items"]), params.get("cold_by", "latest"),
                       int(params.get("cold_seed", 2024))).localCheckpoint()
    return S.assign_cold_split(ordered, cold, n_min, policy).localCheckpoint(), plain, cold


def cold_tables(home: str, ds: str, cold, item_map, plain, labelled) -> dict[str, int]:
    """Write ``cold_items`` (``item_idx, item_id, half``); return the protocol's counts: cold items per half, users
    with a cold target per half, users whose plain leave-one-out test target (``plain``: the split without the
    protocol) was cold but who were left too short a history to keep (dropped), warm test users, and the
    interactions with cold items taken out of the sequences."""
    from pyspark.sql import functions as F

    table = cold.join(item_map, "item_id").select("item_idx", "item_id", "half")
    out = {"cold_items": write_spark(table, home, "cold_items", ds)}
    halves = {r["half"]: r["count"] for r in cold.groupBy("half").count().collect()}
    out.update({f"cold_{h}_items": int(halves.get(h, 0)) for h in ("valid", "test")})
    targets = labelled.filter(F.col("group") == F.col("split"))           # a cold-valid or cold-test target
    by_group = {r["group"]: r["count"] for r in targets.groupBy("group").count().collect()}
    out.update({f"cold_{h}_users": int(by_group.get(h, 0)) for h in ("valid", "test")})
    last_cold = plain.filter(F.col("split") == "test").join(cold, "item_id").count()
    out["cold_users_dropped"] = int(last_cold - out["cold_valid_users"] - out["cold_test_users"])
    out["warm_test_users"] = int(labelled.filter(F.col("split") == "test").count()) - out["cold_test_users"]
    out["cold_interactions_removed"] = int(plain.join(cold, "item_id").count() - targets.count())
    return out


def read_cold(home: str | Path, ds: str):
    """The ``cold_items`` table (``item_idx, item_id, half``) of ``ds``, or None when the split ran without the
    cold-item protocol (the split removes the partition then, so a missing one always means off)."""
    if not partition_path(home, "cold_items", ds).exists():
        return None
    return read_arrow(home, "cold_items", ds)


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
