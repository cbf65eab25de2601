"""Spark job (spark-submit entry point) for ingest: raw files -> staged ``interactions``, ``items``, ``users``.

Partitions land in ``<home>/staging/``; the validate stage publishes them to ``<home>/warehouse/``.

Sources (``--params '{"source": ...}'``):
  ``sequences``  a folder with ``sequences.txt`` (``user item item ...``, oldest first), ``items.tsv``
                 (``item_id, asin, title, attributes``) and optionally ``users.tsv``; no timestamps, so the
                 position in the line is the timestamp. With ``interactions.tsv`` (``user_id, item_id, date``,
                 YYYY-MM-DD) the dated file replaces ``sequences.txt``: a day ``ds`` holds every interaction dated
                 on or before it, ties within a day in the file's order. With ``items_meta.tsv`` (``item_id,
                 price, brand, category_path``) those fill the items' price, brand and categories.
  ``amazon``     review dumps: 2014 ``reviews_<Cat>_5.json.gz`` + ``meta_<Cat>.json.gz`` (Python-literal
                 lines), 2018 and 2023 JSON lines; gzip or plain.
  ``table``      CSV or Parquet interactions (``user_id, item_id, timestamp[, rating]``) + an items file.
  ``synthetic``  the deterministic synthetic shop (``features.synthetic``), written directly from Arrow.

Run alone: ``spark-submit jobs/ingest.py --home H --ds 2026-01-01 --params '{"source": "sequences", "path": DIR}'``.
"""
from __future__ import annotations

import gzip
import json
import sys
import zlib
from pathlib import Path

from features import ingest as T
from features import synthetic
from features.errors import DataError
from jobs.warehouse import base_parser, check_spark, spark_session, write_arrow, write_json, write_spark

STAGING = "staging"  # validate publishes these partitions into the warehouse


def check_file(path: Path, what: str) -> None:
    """Fail early, naming the file, when it is missing, empty or a truncated/corrupt gzip."""
    if not path.exists():
        raise DataError(str(path), f"the {what} file does not exist.", "check data.path and the file names in the config.")
    if path.stat().st_size == 0:
        raise DataError(str(path), f"the {what} file is empty.", "re-export or re-download it.")
    if path.suffix == ".gz":
        try:
            with gzip.open(path, "rb") as fh:
                while fh.read(1 << 22):
                    pass
        except (EOFError, OSError, zlib.error) as exc:
            raise DataError(str(path), f"the {what} file is a truncated or corrupt gzip ({exc}).",
                            "download it again and check its size/checksum.") from None


def _parse_lines(spark, path: Path, parser, what: str, sample: int = 5):
    """Apply a line parser on the executors; collect bad lines into one clear error."""
    def safe(line: str):
        try:
            rec = parser(line)
            return [] if rec is None else [(None, rec)]
        except Exception as exc:  # noqa: BLE001 - reported below with the line itself
            return [(f"{type(exc).__name__}: {exc} in line {line[:120]!r}", None)]

    rdd = spark.sparkContext.textFile(str(path)).flatMap(safe).cache()
    bad = rdd.filter(lambda r: r[0] is not None)
    n_bad = bad.count()
    if n_bad:
        raise DataError(str(path), f"{n_bad} {what} line(s) could not be parsed, e.g. {bad.map(lambda r: r[0]).take(sample)}.",
                        "fix or remove those lines.")
    good = rdd.map(lambda r: r[1])
    if good.isEmpty():
        raise DataError(str(path), f"the {what} file holds no records.", "check that it is the right file.")
    return good


# ----------------------------------------------------------------------------- sources

def _dated_interactions(spark, path: Path, ds: str | None):
    """``interactions.tsv`` -> ``user_id, item_id, timestamp, event_order`` dated on or before ``ds``; the file's
    order is the order within a day."""
    from pyspark.sql import functions as F

    check_file(path, "dated interactions")
    raw = spark.read.csv(str(path), sep="\t", header=True, quote="\u0000")
    T.require_columns(raw, ("user_id", "item_id", "date"), str(path))
    raw = raw.withColumn("event_order", F.monotonically_increasing_id())  # increasing in file order
    day = F.try_to_timestamp(F.trim(F.col("date")), F.lit("yyyy-MM-dd"))
    raw = raw.withColumn("_day", day)
    T.refuse_rows(raw, F.col("_day").isNull(), "date", str(path), 5, "a date that is not YYYY-MM-DD",
                  "fix those rows: every interaction needs its day, e.g. 2014-07-01.")
    if ds:
        raw = raw.filter(F.col("_day") <= F.to_timestamp(F.lit(ds), "yyyy-MM-dd"))
        if raw.isEmpty():
            raise DataError(str(path), f"no interaction is dated on or before ds={ds}.",
                            "run a later day (--ds), or check the file's dates.")
    return raw.select(F.col("user_id").cast("string"), F.col("item_id").cast("string"),
                      F.unix_timestamp(F.col("_day")).alias("timestamp"), "event_order")


def _with_meta(spark, items, path: Path):
    """Price, brand and category path from ``items_meta.tsv`` (an item without a row keeps what it had)."""
    from pyspark.sql import functions as F

    check_file(path, "item metadata")
    meta = spark.read.csv(str(path), sep="\t", header=True, quote="\u0000")
    T.require_columns(meta, ("item_id",), str(path))
    meta = meta.select(F.col("item_id").cast("string"),
                       *[F.col(c).alias(f"_m_{c}") for c in ("price", "brand", "category_path") if c in meta.columns])
    out = items.join(meta, "item_id", "left")
    if "_m_price" in out.columns:
        price = F.expr("try_cast(trim(`_m_price`) as double)")
        T.refuse_rows(out, F.col("_m_price").isNotNull() & (F.trim(F.col("_m_price")) != "") & price.isNull(),
                      "_m_price", str(path), 5, "a price that is not a number",
                      "write prices as plain numbers (12.50) or leave the field empty.")
        out = out.withColumn("price", price)
    if "_m_brand" in out.columns:
        brand = F.when(F.trim(F.col("_m_brand")) != "", F.trim(F.col("_m_brand")))
        out = out.withColumn("brand", F.coalesce(brand, F.col("brand")) if "brand" in items.columns else brand)
    if "_m_category_path" in out.columns:
        path_cats = F.when(F.trim(F.col("_m_category_path")) != "", F.split(F.col("_m_category_path"), r"\|"))
        out = out.withColumn("categories", F.coalesce(path_cats, F.col("categories")))
    return out.drop(*[c for c in out.columns if c.startswith("_m_")])


def ingest_sequences(spark, p: dict):
    from pyspark.sql import functions as F
    from pyspark.sql.types import IntegerType, StringType, StructField, StructType

    root = Path(p["path"])
    seq_path, items_path, dated = root / "sequences.txt", root / "items.tsv", root / "interactions.tsv"
    check_file(items_path, "items")
    if dated.exists():
        inter = _dated_interactions(spark, dated, p.get("ds"))
    else:
        check_file(seq_path, "sequences")
        rows = _parse_lines(spark, seq_path, T.parse_sequence_line, "sequence").flatMap(lambda r: r)
        schema = StructType([StructField("user_id", StringType()), StructField("item_id", StringType()),
                             StructField("position", IntegerType())])
        inter = (spark.createDataFrame(rows, schema)
                 .withColumn("timestamp", F.col("position").cast("long"))
                 .withColumn("event_order", F.col("position").cast("long")))
    items = spark.read.csv(str(items_path), sep="\t", header=True, quote="\u0000")
    T.require_columns(items, ("item_id", "title", "attributes"), str(items_path))
    items = items.withColumn("categories", F.split(F.coalesce(F.col("attributes"), F.lit("")), r"\|"))
    if (root / "items_meta.tsv").exists():
        items = _with_meta(spark, items, root / "items_meta.tsv")
    if dated.exists():  # the catalogue of day ds: items with an interaction by then (as the review dumps)
        items = items.join(inter.select("item_id").distinct(), "item_id", "left_semi")
    users_path = root / "users.tsv"
    if users_path.exists():
        check_file(users_path, "users")
        users = spark.read.csv(str(users_path), sep="\t", header=True)
        T.require_columns(users, ("user_id",), str(users_path))
        ext = "reviewerID" if "reviewerID" in users.columns else None
        users = users.select(F.col("user_id").cast("string"),
                             (F.col(ext) if ext else F.lit(None)).cast("string").alias("external_id"),
                             F.lit(None).cast("long").alias("first_seen"))
        if dated.exists():  # only the users with an interaction by ds
            users = users.join(inter.select("user_id").distinct(), "user_id", "left_semi")
    else:
        users = T.users_from_interactions(inter)
    return T.to_interactions(inter), T.to_items(items), users


def ingest_amazon(spark, p: dict):
    from pyspark.sql import Row
    from pyspark.sql import functions as F

    root = Path(p.get("path") or ".")
    reviews, meta = root / p["reviews_file"], root / p["meta_file"]
    check_file(reviews, "reviews")
    check_file(meta, "metadata")
    rev = spark.createDataFrame(_parse_lines(spark, reviews, T.parse_review, "review").map(lambda d: Row(**d)),
                                "user_id string, item_id string, timestamp long, rating double")
    if p.get("min_rating"):
        rev = rev.filter(F.col("rating") >= float(p["min_rating"]))
    inter = rev.withColumn("event_order", F.monotonically_increasing_id())
    items = spark.createDataFrame(
        _parse_lines(spark, meta, T.parse_meta, "metadata").map(lambda d: Row(**d)),
        "item_id string, title string, brand string, categories array<string>, description string, price double")
    items = items.join(inter.select("item_id").distinct(), "item_id", "left_semi").dropDuplicates(["item_id"])
    return T.to_interactions(inter), T.to_items(items), T.users_from_interactions(inter)


TEXT_SUFFIXES = {".csv": ",", ".tsv": "\t", ".tab": "\t"}


def _read_table(spark, path: Path):
    """A CSV/TSV file, a Parquet file, or a folder of either (as Spark writes them: part files)."""
    if path.is_dir():
        files = [f for f in path.iterdir() if f.is_file() and not f.name.startswith((".", "_"))]
        kinds = {f.suffix for f in files}
        if not files:
            raise DataError(str(path), "is an empty folder.",
                            "point the data.*_file setting at a file, or at a folder of Parquet or CSV part files.")
        if kinds <= {".parquet"}:
            return spark.read.parquet(str(path))
        if len(kinds) == 1 and next(iter(kinds)) in TEXT_SUFFIXES:
            return _read_text(spark, str(path), TEXT_SUFFIXES[next(iter(kinds))])
        raise DataError(str(path), f"holds files of several kinds ({', '.join(sorted(kinds))}).",
                        "keep one format per folder: Parquet part files, or CSV/TSV files with the same header.")
    if path.suffix == ".parquet":
        return spark.read.parquet(str(path))
    return _read_text(spark, str(path), TEXT_SUFFIXES.get(path.suffix, ","))


def _read_text(spark, path: str, sep: str):
    """RFC 4180: quoted fields may hold the separator, doubled quotes ("") and newlines, and are read as written."""
    return spark.read.csv(path, sep=sep, header=True, quote='"', escape='"', multiLine=True)


def ingest_table(spark, p: dict):
    from pyspark.sql import functions as F

    root = Path(p.get("path") or ".")
    inter_path, items_path = root / p["interactions_file"], root / p["items_file"]
    check_file(inter_path, "interactions")
    check_file(items_path, "items")
    inter = _read_table(spark, inter_path)
    T.require_columns(inter, ("user_id", "item_id", "timestamp"), str(inter_path))
    inter = T.ids_as_text(inter, ("user_id", "item_id"))                         # Parquet exports with integer ids
    if inter.isEmpty():
        raise DataError(str(inter_path), "the interactions file has a header but no rows.", "export the data again.")
    inter = T.cast_timestamps(inter, str(inter_path))
    inter = T.check_ratings(inter, str(inter_path))
    if "rating" in inter.columns and p.get("min_rating"):
        inter = inter.filter(F.col("rating").cast("double") >= float(p["min_rating"]))
    inter = inter.withColumn("event_order", F.monotonically_increasing_id())
    items = _read_table(spark, items_path)
    T.require_columns(items, ("item_id",), str(items_path))
    items = T.ids_as_text(items, ("item_id",))
    users = T.users_from_interactions(inter)
    if p.get("users_file"):
        users_path = root / p["users_file"]
        check_file(users_path, "users")
        u = _read_table(spark, users_path)
        T.require_columns(u, ("user_id", "external_id"), str(users_path))
        ext = u.select(F.col("user_id").cast("string"), F.col("external_id").cast("string"))
        users = users.drop("external_id").join(ext, "user_id", "left").select(*T.USER_COLUMNS)
    return T.to_interactions(inter), T.to_items(items), users


def ingest_synthetic(home: str, ds: str, p: dict) -> dict[str, int]:
    params = synthetic.ShopParams(**p["synthetic"])
    tables = synthetic.scaled(params, ds) if params.scale > 0 else synthetic.generate(params, ds)
    return {name: write_arrow(tbl, home, name, ds, STAGING) for name, tbl in tables.items()}


SOURCES = {"sequences": ingest_sequences, "amazon": ingest_amazon, "table": ingest_table}


def run(home: str, ds: str, params: dict, master: str | None = None, spark_conf: dict | None = None) -> dict[str, int]:
    """Ingest one day; returns rows written per table."""
    source = params.get("source", "synthetic")
    if source == "synthetic":
        return ingest_synthetic(home, ds, params)
    if source not in SOURCES:
        raise DataError("config data.source", f"unknown source '{source}'.",
                        f"use one of synthetic, {', '.join(SOURCES)}.")
    spark = spark_session("recpipe-ingest", master, spark_conf)
    inter, items, users = SOURCES[source](spark, {**params, "ds": ds})
    # Every table is materialised and checked before the first swap, so a failing source writes nothing.
    inter, items, users = inter.cache(), items.cache(), users.cache()
    counts = {"interactions": inter.count(), "items": items.count(), "users": users.count()}
    for name, n in counts.items():
        if n == 0:
            raise DataError(f"source '{source}'", f"no {name} rows were read.", "check the input files.")
    frames = {"interactions": inter, "items": items, "users": users}
    for name, df in frames.items():
        check_spark(name, df)
    return {name: write_spark(df, home, name, ds, STAGING) for name, df in frames.items()}


def main(argv: list[str] | None = None) -> int:
    args = base_parser(__doc__.splitlines()[0]).parse_args(argv)
    try:
        counts = run(args.home, args.ds, json.loads(args.params), args.master, json.loads(args.spark_conf))
    except DataError as exc:
        print(f"ingest failed: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(counts))
    write_json(Path(args.home) / "runs" / args.ds / "jobs" / "ingest.json", counts)
    return 0


if __name__ == "__main__":
    sys.exit(main())
