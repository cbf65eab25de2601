"""Spark job (jobs layer) for batch scoring: a user file through a registered model's pyfunc on Spark's executors
(``mlflow.pyfunc.spark_udf``), written as a Parquet dataset; the nightly push of recommendations to a store.

The users file (Parquet, or CSV with a header) has ``user_id`` and, optionally, ``history`` and ``exclude``: item ids,
oldest first, as a list column in Parquet or space-separated in CSV. The output has one row per input row:
``user_id``, ``item_ids``, ``scores``, ``known`` (and ``unknown_items`` when a history was given), the columns the
served model answers with. ``recpipe score`` (``pipelines.batch``) resolves ``NAME[@alias]`` to the model's URI.
"""
from __future__ import annotations

from pathlib import Path

from features.errors import DataError
from jobs.warehouse import spark_session, write_spark_to

ITEM_LISTS = ("history", "exclude")
RESULT = "user_id string, item_ids array<string>, scores array<double>, known boolean"


def read_users(spark, path: Path):
    """The users file as a DataFrame with ``user_id`` (string) and the item-list columns it has (array<string>)."""
    from pyspark.sql import functions as F

    if not path.exists():
        raise DataError(str(path), "no such users file.", "give a Parquet file or folder, or a CSV with a header.")
    csv = path.suffix.lower() == ".csv"
    df = spark.read.option("header", True).csv(str(path)) if csv else spark.read.parquet(str(path))
    if "user_id" not in df.columns:
        raise DataError(str(path), f"has no 'user_id' column (columns: {', '.join(df.columns) or 'none'}).",
                        "name the column of user ids user_id.")
    cols = [F.col("user_id").cast("string").alias("user_id")]
    for name in (c for c in ITEM_LISTS if c in df.columns):
        kind = df.schema[name].dataType.simpleString()
        if csv or kind == "string":
            cols.append(F.split(F.trim(F.col(name)), r"\s+").alias(name))    # "i1 i2 i3", oldest first
        elif kind.startswith("array<"):
            cols.append(F.col(name).cast("array<string>").alias(name))
        else:
            raise DataError(str(path), f"column '{name}' is {kind}.",
                            "give item ids as a list column or as one space-separated string.")
    return df.select(*cols)


def run(model_uri: str, users: str, out: str, k: int, master: str | None = None, spark_conf: dict | None = None,
        partitions: int = 0) -> dict[str, int]:
    """Score every row of ``users`` with the pyfunc at ``model_uri``; write ``out`` (replaced whole, atomically)."""
    import mlflow.pyfunc
    from pyspark.sql import functions as F

    spark = spark_session("recpipe-score", master, spark_conf)
    df = read_users(spark, Path(users))
    if partitions:
        df = df.repartition(partitions)
    has_history = "history" in df.columns
    udf = mlflow.pyfunc.spark_udf(spark, model_uri, result_type=RESULT + (", unknown_items long" if has_history
                                                                          else ""),
                                  env_manager="local", params={"k": int(k)})
    scored = df.select(udf(F.struct(*df.columns)).alias("r")).select("r.*")
    rows = write_spark_to(scored, Path(out))
    return {"rows": rows, "files": len(list(Path(out).glob("*.parquet")))}
