"""The warehouse's read/write layer (every job and stage reads and writes tables through it): the Spark session,
partition paths, the atomic partition swap, JSON records.

A partition ``warehouse/<table>/ds=<ds>/`` is always written to a sibling temporary directory first and
renamed into place only when complete, so a failed or repeated run never leaves a half-written or
duplicated partition (the previous partition stays intact until the swap).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from features.schemas import check_schema

if TYPE_CHECKING:  # pragma: no cover
    from pyspark.sql import DataFrame, SparkSession

LOG4J = Path(__file__).with_name("log4j2.properties")


def base_parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--home", required=True, help="RECPIPE_HOME: root of warehouse/ and runs/")
    p.add_argument("--ds", required=True, help="logical date YYYY-MM-DD")
    p.add_argument("--master", default=None, help="spark.master (default: as spark-submit set it, else local[2])")
    p.add_argument("--spark-conf", default="{}", help="JSON object of extra Spark settings")
    p.add_argument("--params", default="{}", help="JSON object of job parameters")
    return p


def spark_session(app: str, master: str | None = None, conf: dict | None = None) -> "SparkSession":
    """A quiet Spark session (no UI, no console progress, errors-only logging, loopback driver)."""
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    os.environ.setdefault("PYARROW_IGNORE_TIMEZONE", "1")
    from pyspark.sql import SparkSession

    conf = dict(conf or {})
    log4j = f"-Dlog4j2.configurationFile=file:{LOG4J}"
    for role in ("driver", "executor"):  # JVM options given in conf come after the quiet logging, not instead of it
        key = f"spark.{role}.extraJavaOptions"
        conf[key] = f"{log4j} {conf[key]}" if conf.get(key) else log4j
    builder = (SparkSession.builder.appName(app)
               .config("spark.ui.enabled", "false")
               .config("spark.ui.showConsoleProgress", "false")
               .config("spark.sql.session.timeZone", "UTC")
               .config("spark.sql.execution.arrow.pyspark.enabled", "true"))
    if master:
        builder = builder.master(master)
    # Python workers start the first `python3` on PATH unless told otherwise: a venv's `recpipe` called by cron or
    # an Airflow worker without an activated venv then fails in the workers ("No module named 'features'"). On a
    # local master the workers run on this machine, so they use this interpreter; a cluster sets its own.
    if (master or "local").startswith("local") and not os.environ.get("PYSPARK_PYTHON"):
        os.environ["PYSPARK_PYTHON"] = sys.executable  # read by PySpark when the context starts
    for k, v in conf.items():
        builder = builder.config(k, str(v))
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    return spark


def partition_path(home: str | Path, table: str, ds: str, zone: str = "warehouse") -> Path:
    """``<home>/<zone>/<table>/ds=<ds>``; ingest writes the ``staging`` zone, validate publishes it."""
    return Path(home) / zone / table / f"ds={ds}"


def publish(home: str | Path, table: str, ds: str) -> Path:
    """Move a validated ``staging`` partition into the ``warehouse`` (atomic swap)."""
    src, dst = partition_path(home, table, ds, "staging"), partition_path(home, table, ds)
    if not src.exists():
        raise FileNotFoundError(f"no staged partition {src}; run the ingest stage first")
    dst.parent.mkdir(parents=True, exist_ok=True)
    swap_in(src, dst)
    return dst


def _tmp_sibling(final: Path) -> Path:
    final.parent.mkdir(parents=True, exist_ok=True)
    return final.parent / f"_tmp-{final.name}-{uuid.uuid4().hex[:8]}"


def swap_in(tmp: Path, final: Path) -> None:
    """Replace ``final`` by the complete directory ``tmp``; the old partition is removed only after."""
    old = None
    if final.exists():
        old = final.parent / f"_old-{final.name}-{uuid.uuid4().hex[:8]}"
        os.replace(final, old)
    os.replace(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def remove_partition(home: str | Path, table: str, ds: str, zone: str = "warehouse") -> None:
    """Remove the ``ds`` partition of ``table`` if there is one (a table a re-run of the day no longer writes)."""
    path = partition_path(home, table, ds, zone)
    if path.exists():
        old = path.parent / f"_old-{path.name}-{uuid.uuid4().hex[:8]}"
        os.replace(path, old)  # atomic: readers see the partition or nothing, never half of it
        shutil.rmtree(old, ignore_errors=True)


def count_rows(path: Path) -> int:
    return pads.dataset(str(path), format="parquet").count_rows()


def check_spark(table: str, df: "DataFrame") -> None:
    """Raise ``DataError`` when ``df`` does not match the declared schema of ``table``."""
    from pyspark.sql.pandas.types import to_arrow_schema

    check_schema(table, to_arrow_schema(df.schema))


def write_spark(df: "DataFrame", home: str | Path, table: str, ds: str, zone: str = "warehouse") -> int:
    """Check ``df`` against the declared schema, write it as the ``ds`` partition atomically, return rows."""
    check_spark(table, df)
    return write_spark_to(df, partition_path(home, table, ds, zone))


def write_spark_to(df: "DataFrame", final: Path) -> int:
    """Write ``df`` as a Parquet folder ``final`` atomically (a sibling first, swapped in when complete, the old
    folder removed only after); return its rows."""
    tmp = _tmp_sibling(final)
    try:
        df.write.mode("overwrite").parquet(str(tmp))
        rows = count_rows(tmp)
        swap_in(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return rows


def write_arrow(tbl: pa.Table, home: str | Path, table: str, ds: str, zone: str = "warehouse") -> int:
    """Same contract as ``write_spark`` for an in-memory Arrow table."""
    check_schema(table, tbl.schema)
    final = partition_path(home, table, ds, zone)
    tmp = _tmp_sibling(final)
    try:
        tmp.mkdir()
        pq.write_table(tbl, tmp / "part-00000.parquet")
        swap_in(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return tbl.num_rows


def read_arrow(home: str | Path, table: str, ds: str, columns: list[str] | None = None,
               zone: str = "warehouse") -> pa.Table:
    path = partition_path(home, table, ds, zone)
    if not path.exists():
        raise FileNotFoundError(f"table '{table}' has no partition for ds={ds} at {path}; run the stage that writes it first")
    return pads.dataset(str(path), format="parquet").to_table(columns=columns)


def write_json(path: Path, obj: dict) -> None:
    """Write JSON atomically (temporary file + rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, default=str))
    os.replace(tmp, path)
