"""Spark job (spark-submit entry point) for WALS: Spark ML ``ALS(implicitPrefs=True)`` on ``sequences`` of ``ds``.

Hu, Koren and Volinsky's weighted ALS: preference p = 1[count > 0], confidence c = 1 + alpha * count.
Spark scales the L2 penalty of each row by its number of interactions (ALS-WR); pass ``regularization``
already divided accordingly if you need implicit's unscaled meaning (the stage does this, see
``pipelines/backends/wals.py``). Writes ``user_factors`` / ``item_factors`` (keyed by the original ids) to the zone
given in params; the split's ``cold_items`` (when it wrote some) are left out of the fit. Run alone:
``spark-submit jobs/wals.py --home H --ds D --params '{"factors": 64, "regularization": 0.05, "alpha": 10,
"iterations": 15, "seed": 42, "splits": ["train"], "zone": "warehouse"}'``.
"""
from __future__ import annotations

import json
import shutil
import sys
import time
import uuid
from pathlib import Path

from features.errors import DataError
from jobs.warehouse import base_parser, partition_path, spark_session, write_json, write_spark

CHECKPOINT_EVERY = 10  # iterations between ALS checkpoints (Spark's default interval, effective once a dir is set)


def run(home: str, ds: str, params: dict, master: str | None = None, spark_conf: dict | None = None) -> dict:
    from pyspark.ml.recommendation import ALS
    from pyspark.sql import functions as F

    src = partition_path(home, "sequences", ds)
    if not src.exists():
        raise DataError(str(src), "no sequences partition for this ds.", "run the split stage first.")
    spark = spark_session("recpipe-wals", master, spark_conf)
    seq = spark.read.parquet(str(src)).filter(F.col("split").isin(list(params.get("splits", ["train"]))))
    cold = partition_path(home, "cold_items", ds)
    if cold.exists():  # the split's cold items: never fitted, not even from a valid target (train + valid refit)
        seq = seq.join(spark.read.parquet(str(cold)).select("item_idx"), "item_idx", "left_anti")
    counts = seq.groupBy("user_idx", "item_idx").agg(F.count("*").cast("float").alias("count")).cache()
    counts.count()
    als = ALS(rank=int(params["factors"]), maxIter=int(params["iterations"]), regParam=float(params["regularization"]),
              alpha=float(params["alpha"]), implicitPrefs=True, userCol="user_idx", itemCol="item_idx",
              ratingCol="count", seed=int(params.get("seed", 42)), coldStartStrategy="drop",
              checkpointInterval=CHECKPOINT_EVERY)
    # ALS's lineage grows with every iteration: without a checkpoint 30 iterations ended in a StackOverflowError
    # (Spark 4, JVM defaults, the synthetic shop). The checkpoints go under the home, which executors share.
    ckpt = Path(home) / "checkpoints" / "spark-wals" / f"{ds}-{uuid.uuid4().hex[:8]}"
    spark.sparkContext.setCheckpointDir(str(ckpt))
    t0 = time.perf_counter()
    try:
        model = als.fit(counts)
        uf, itf = model.userFactors.cache(), model.itemFactors.cache()
        uf.count(), itf.count()
    finally:
        shutil.rmtree(ckpt, ignore_errors=True)
    fit_seconds = time.perf_counter() - t0
    umap = spark.read.parquet(str(partition_path(home, "user_map", ds)))
    imap = spark.read.parquet(str(partition_path(home, "item_map", ds)))
    zone = params.get("zone", "warehouse")
    users = (uf.join(umap, uf.id == umap.user_idx)
             .select("user_id", F.col("user_idx").cast("int"), F.col("features").cast("array<float>").alias("factors")))
    items = (itf.join(imap, itf.id == imap.item_idx)
             .select("item_id", F.col("item_idx").cast("int"), F.col("features").cast("array<float>").alias("factors")))
    return {"user_factors": write_spark(users, home, "user_factors", ds, zone),
            "item_factors": write_spark(items, home, "item_factors", ds, zone),
            "fit_seconds": round(fit_seconds, 3)}


def main(argv: list[str] | None = None) -> int:
    args = base_parser(__doc__.splitlines()[0]).parse_args(argv)
    try:
        out = run(args.home, args.ds, json.loads(args.params), args.master, json.loads(args.spark_conf))
    except DataError as exc:
        print(f"wals failed: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(out))
    write_json(Path(args.home) / "runs" / args.ds / "jobs" / "wals.json", out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
