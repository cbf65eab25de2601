"""Pure transform (features layer) of ingest: raw source records -> ``interactions``, ``items``, ``users`` schemas.

Line parsers (``parse_review``, ``parse_meta``) turn one raw line of an Amazon dump into a plain dict and
are applied by the Spark job; the DataFrame transforms rename, cast and check columns. Nothing here reads
or writes files.
"""
from __future__ import annotations

import ast
import json
import re
from typing import TYPE_CHECKING, Any

from features.errors import DataError

if TYPE_CHECKING:  # pragma: no cover
    from pyspark.sql import DataFrame

INTERACTION_COLUMNS = ("user_id", "item_id", "timestamp", "event_order", "rating")
ITEM_COLUMNS = ("item_id", "title", "brand", "categories", "description", "price")
USER_COLUMNS = ("user_id", "external_id", "first_seen")
# "$1,299.00" (thousands separators) or "12.99" / "12,99" (decimal point or comma)
_PRICE = re.compile(r"(?P<grouped>[-+]?\d{1,3}(?:,\d{3})+(?:\.\d+)?)(?!\d)|(?P<plain>[-+]?\d+(?:[.,]\d+)?)")


# ---------------------------------------------------------------------------- Amazon review dumps

def parse_review(line: str) -> dict[str, Any] | None:
    """One review line of the 2014, 2018 (JSON) or 2023 (JSON) dumps -> ``user_id, item_id, timestamp, rating``.

    2014/2018: ``reviewerID, asin, unixReviewTime (s), overall``; 2023: ``user_id, parent_asin (or asin),
    timestamp (ms), rating``. Returns ``None`` for blank lines; raises ``ValueError`` for unparsable ones.
    """
    line = line.strip()
    if not line:
        return None
    rec = _record(line)  # some 2014 mirrors ship Python-literal reviews too
    if "reviewerID" in rec:
        return {"user_id": str(rec["reviewerID"]), "item_id": str(rec["asin"]),
                "timestamp": int(rec["unixReviewTime"]), "rating": _float(rec.get("overall"))}
    if "user_id" in rec:
        ts = int(rec["timestamp"])
        return {"user_id": str(rec["user_id"]), "item_id": str(rec.get("parent_asin") or rec["asin"]),
                "timestamp": ts // 1000 if ts > 10**11 else ts, "rating": _float(rec.get("rating"))}
    raise ValueError(f"unknown review record with keys {sorted(rec)[:8]}")


def parse_meta(line: str) -> dict[str, Any] | None:
    """One metadata line (2014 Python literal, 2018/2023 JSON) -> the ``items`` columns."""
    line = line.strip()
    if not line:
        return None
    rec = _record(line)  # the 2014 meta files are Python literals, not JSON
    item_id = rec.get("parent_asin") or rec.get("asin")
    if not item_id:
        raise ValueError("metadata record has neither 'asin' nor 'parent_asin'")
    cats = rec.get("categories") if "categories" in rec else rec.get("category")
    flat: list[str] = []
    for c in cats or []:
        flat.extend(c if isinstance(c, list) else [c])
    desc = rec.get("description")
    if isinstance(desc, list):
        desc = " ".join(str(d) for d in desc)
    brand = rec.get("brand") or rec.get("store")
    return {"item_id": str(item_id), "title": _str(rec.get("title")), "brand": _str(brand),
            "categories": [str(c) for c in dict.fromkeys(flat) if str(c).strip()],
            "description": _str(desc), "price": _price(rec.get("price"))}


def _record(line: str) -> dict:
    """A JSON object or a Python-literal dict; ``ValueError`` for anything else (a truncated line too)."""
    try:
        rec = json.loads(line)
    except json.JSONDecodeError:
        try:
            rec = ast.literal_eval(line)
        except (SyntaxError, ValueError) as exc:
            raise ValueError(f"neither JSON nor a Python literal ({exc.__class__.__name__}: {exc})") from None
    if not isinstance(rec, dict):
        raise ValueError(f"expected an object, got {type(rec).__name__}")
    return rec


def _str(x: Any) -> str | None:
    return None if x is None or str(x).strip() == "" else str(x)


def _float(x: Any) -> float | None:
    try:
        return None if x is None else float(x)
    except (TypeError, ValueError):
        return None


def _price(x: Any) -> float | None:
    if isinstance(x, (int, float)):
        return float(x)
    m = _PRICE.search(str(x or ""))
    if not m:
        return None
    if m.group("grouped"):
        return float(m.group("grouped").replace(",", ""))
    return float(m.group("plain").replace(",", "."))


# ---------------------------------------------------------------------------- sequence-file layout

def parse_sequence_line(line: str) -> list[tuple[str, str, int]]:
    """``user item item ...`` -> ``[(user_id, item_id, position)]``; raises ``ValueError`` on bad tokens."""
    tokens = line.split()
    if not tokens:
        return []
    if len(tokens) < 2:
        raise ValueError(f"user {tokens[0]} has no items")
    for t in tokens:
        if not t.isdigit():
            raise ValueError(f"token '{t}' is not an integer id")
    return [(tokens[0], t, pos) for pos, t in enumerate(tokens[1:])]


def require_columns(df: "DataFrame", required: tuple[str, ...], source: str) -> None:
    missing = [c for c in required if c not in df.columns]
    if missing:
        found = [_clip(c, 40) for c in df.columns[:12]] + ([f"... {len(df.columns)} in all"] if len(df.columns) > 12
                                                             else [])
        raise DataError(source, f"missing column(s) {missing}; found {found}.",
                        f"provide a header row with at least {list(required)}.")


TS_MIN, TS_MAX = -2_208_988_800, 7_258_118_400  # 1900-01-01 and 2200-01-01 in epoch seconds


def cast_timestamps(df: "DataFrame", source: str, sample: int = 5) -> "DataFrame":
    """Cast a raw ``timestamp`` column (epoch s or ms, or ISO-8601) to int64 seconds.

    Raises ``DataError`` naming the rows whose value is neither.
    """
    from pyspark.sql import functions as F

    raw = F.trim(F.col("timestamp").cast("string"))
    num = _as_double("timestamp")
    iso = F.unix_timestamp(F.try_to_timestamp(raw))
    secs = F.when(num.isNotNull(), F.when(num > 1e11, num / 1000).otherwise(num)).otherwise(iso)
    # NaN, infinities and values no calendar holds (1e30 would overflow int64) are bad rows, not a crash
    secs = F.when(secs.between(TS_MIN, TS_MAX) & ~F.isnan(secs.cast("double")), secs)
    out = df.withColumn("_ts", secs.cast("long"))
    refuse_rows(out, F.col("_ts").isNull(), "timestamp", source, sample,
                 "a timestamp that is neither a number nor ISO-8601 between 1900 and 2200",
                 "fix or drop those rows (timestamps are epoch seconds or milliseconds, or ISO dates).")
    return out.drop("timestamp").withColumnRenamed("_ts", "timestamp")


def check_ratings(df: "DataFrame", source: str, sample: int = 5) -> "DataFrame":
    """Refuse ratings that are not finite numbers (text, NaN, infinity); an empty rating stays null (no rating)."""
    from pyspark.sql import functions as F

    if "rating" not in df.columns:
        return df
    raw = F.trim(F.col("rating").cast("string"))
    num = _as_double("rating")
    empty = raw.isNull() | (raw == "")
    finite = num.isNotNull() & ~F.isnan(num) & (F.abs(num) < float("inf"))
    refuse_rows(df, ~(empty | finite), "rating", source, sample, "a rating that is not a finite number",
                 "fix or drop those rows, or leave the rating empty (an interaction without a rating).")
    return df.withColumn("rating", F.when(empty, F.lit(None)).otherwise(num))


def _as_double(column: str):
    """``column`` as a double where its trimmed text is a number, else null (never a cast error)."""
    from pyspark.sql import functions as F

    return F.expr(f"try_cast(trim(cast(`{column}` as string)) as double)")


def refuse_rows(df: "DataFrame", bad, column: str, source: str, sample: int, problem: str, fix: str) -> None:
    """Raise ``DataError`` counting the rows where ``bad`` holds, with up to ``sample`` of their ``column`` values."""
    rows = df.filter(bad)
    n_bad = rows.count()
    if n_bad:
        values = [_clip(r[column]) for r in rows.select(column).limit(sample).collect()]
        raise DataError(source, f"{n_bad} row(s) have {problem}, e.g. {values}.", fix)


def _clip(value, limit: int = 60):
    """A sample value for a message, capped (a 5 MB field must not be echoed whole)."""
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} characters)"


def ids_as_text(df: "DataFrame", columns: tuple[str, ...]) -> "DataFrame":
    """Ids are text in every table: an integer (or other typed) id column is cast as it is read, so a Parquet export
    with integer ids joins the CSV path instead of failing a schema check later."""
    from pyspark.sql import functions as F

    for c in columns:
        df = df.withColumn(c, F.col(c).cast("string"))
    return df


def to_interactions(df: "DataFrame") -> "DataFrame":
    """Cast to the ``interactions`` schema; ``event_order`` must already be present."""
    from pyspark.sql import functions as F

    if "rating" not in df.columns:
        df = df.withColumn("rating", F.lit(None))
    return df.select(F.col("user_id").cast("string"), F.col("item_id").cast("string"),
                     F.col("timestamp").cast("long"), F.col("event_order").cast("long"),
                     F.col("rating").cast("float"))


def to_items(df: "DataFrame") -> "DataFrame":
    from pyspark.sql import functions as F
    from pyspark.sql.types import ArrayType, StringType

    for c, t in (("title", "string"), ("brand", "string"), ("description", "string"), ("price", "double")):
        if c not in df.columns:
            df = df.withColumn(c, F.lit(None).cast(t))
    if "categories" not in df.columns:
        df = df.withColumn("categories", F.lit(None).cast(ArrayType(StringType())))
    elif dict(df.dtypes)["categories"] == "string":
        df = df.withColumn("categories", F.split(F.col("categories"), r"\|"))
    return df.select(F.col("item_id").cast("string"), F.col("title").cast("string"),
                     F.col("brand").cast("string"), F.col("categories").cast(ArrayType(StringType())),
                     F.col("description").cast("string"), F.col("price").cast("double"))


def users_from_interactions(inter: "DataFrame") -> "DataFrame":
    """A ``users`` table for sources without one: every user, first-seen timestamp."""
    from pyspark.sql import functions as F

    return (inter.groupBy("user_id").agg(F.min("timestamp").alias("first_seen"))
            .select("user_id", F.lit(None).cast("string").alias("external_id"), "first_seen"))
