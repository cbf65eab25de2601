"""Pure transform (features layer) of the split: k-core filter, time order, leave-one-out, contiguous ids.

Time order within a user is ``(timestamp, event_order, item_id)``: ties in timestamp are broken by the
row's order in the source file, then by item id, so the split is deterministic.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from pyspark.sql import DataFrame

ORDER = ("timestamp", "event_order", "item_id")


def kcore(df: "DataFrame", k: int, max_rounds: int = 50) -> "DataFrame":
    """Keep users and items with at least ``k`` interactions each, repeating until stable (k <= 1: no-op)."""
    from pyspark.sql import functions as F
    from pyspark.sql.window import Window

    if k <= 1:
        return df
    for _ in range(max_rounds):
        before = df.count()
        df = (df.withColumn("_nu", F.count("*").over(Window.partitionBy("user_id")))
                .withColumn("_ni", F.count("*").over(Window.partitionBy("item_id")))
                .filter((F.col("_nu") >= k) & (F.col("_ni") >= k)).drop("_nu", "_ni")).localCheckpoint()
        if df.count() == before:
            break
    return df


def order_events(df: "DataFrame", dedupe_consecutive: bool = False) -> "DataFrame":
    """Add ``position`` (0-based, time order) and ``n`` (events of the user)."""
    from pyspark.sql import functions as F
    from pyspark.sql.window import Window

    w = Window.partitionBy("user_id").orderBy(*ORDER)
    if dedupe_consecutive:
        df = (df.withColumn("_prev", F.lag("item_id").over(w))
                .filter(F.col("_prev").isNull() | (F.col("_prev") != F.col("item_id"))).drop("_prev"))
    return (df.withColumn("position", (F.row_number().over(w) - 1).cast("int"))
              .withColumn("n", F.count("*").over(Window.partitionBy("user_id"))))


def assign_split(df: "DataFrame", min_interactions: int, short_policy: str) -> "DataFrame":
    """Leave-one-out: last event ``test``, second-to-last ``valid``, the rest ``train``.

    Users with fewer than ``min_interactions`` events are dropped (``short_policy='drop'``) or kept with all
    their events in ``train`` (``'train_only'``).
    """
    from pyspark.sql import functions as F

    short = F.col("n") < min_interactions
    if short_policy == "drop":
        df = df.filter(~short)
    elif short_policy != "train_only":
        raise ValueError(f"split.short_policy must be 'drop' or 'train_only', got '{short_policy}'")
    label = (F.when(short, "train").when(F.col("position") == F.col("n") - 1, "test")
             .when(F.col("position") == F.col("n") - 2, "valid").otherwise("train"))
    return df.withColumn("split", label)


def cold_count(n_items: int, share: float) -> int:
    """How many of ``n_items`` items are cold: ``share`` of them, rounded, at least 2 (one per half) when on."""
    return 0 if share <= 0 else min(n_items, max(2, round(share * n_items)))


def pick_cold(df: "DataFrame", share: float, by: str, seed: int) -> "DataFrame":
    """``item_id, half``: the cold items of ``df``'s items, ``half`` ``valid`` or ``test``.

    ``by='latest'``: the items whose first event (the smallest ``timestamp``: a date, or the position in the
    sequence where the source has no dates) is the latest, ties broken by a seeded hash of the item id;
    ``'random'``: the first items in seeded-hash order. The halves: the first ``k // 2`` cold items in another
    seeded-hash order are ``valid``, the rest ``test``. Deterministic for a given ``seed`` and data.
    """
    from pyspark.sql import functions as F
    from pyspark.sql.window import Window

    def hashed(salt: str):
        return F.xxhash64(F.lit(int(seed)), F.lit(salt), F.col("item_id"))

    firsts = df.groupBy("item_id").agg(F.min("timestamp").alias("_first"))
    k = cold_count(firsts.count(), share)
    if by == "latest":
        order = [F.col("_first").desc(), hashed("tie"), F.col("item_id")]
    elif by == "random":
        order = [hashed("random"), F.col("item_id")]
    else:
        raise ValueError(f"split.cold_by must be 'latest' or 'random', got '{by}'")
    picked = firsts.withColumn("_r", F.row_number().over(Window.orderBy(*order))).filter(F.col("_r") <= k)
    half = F.row_number().over(Window.orderBy(hashed("half"), F.col("item_id")))
    return picked.select("item_id", F.when(half <= k // 2, "valid").otherwise("test").alias("half"))


def assign_cold_split(df: "DataFrame", cold: "DataFrame", min_interactions: int, short_policy: str) -> "DataFrame":
    """Leave-one-out without the ``cold`` items (``item_id, half``) in training; adds ``group``.

    Every event with a cold item leaves, except a user's last event: a cold-test item there is the user's test
    target (``group='test'``: the valid target is their last warm event, the rest train), a cold-valid item their
    valid target (``group='valid'``: no test target, every warm event train). Users whose last event is warm
    (``group='warm'``) get the plain leave-one-out of their warm events. Positions are renumbered. The short rule
    of ``assign_split`` applies to what is left, and a cold target with no warm event before it is short too (no
    history); a short user's cold target never becomes train (``train_only`` keeps only the warm events).
    """
    from pyspark.sql import functions as F
    from pyspark.sql.window import Window

    if short_policy not in ("drop", "train_only"):
        raise ValueError(f"split.short_policy must be 'drop' or 'train_only', got '{short_policy}'")
    user = Window.partitionBy("user_id")
    last = F.col("position") == F.col("n") - 1
    df = (df.join(F.broadcast(cold), "item_id", "left")
            .withColumn("group", F.max(F.when(last, F.coalesce(F.col("half"), F.lit("warm")))).over(user))
            .filter(F.col("half").isNull() | last).drop("position", "n"))
    df = order_events(df)
    target = F.col("half").isNotNull()
    short = (F.col("n") < min_interactions) | (target & (F.col("n") < 2))
    df = df.filter(~short | ~target) if short_policy == "train_only" else df.filter(~short)
    label = (F.when(short, "train").when(target & (F.col("group") == "valid"), "valid").when(target, "test")
             .when((F.col("group") != "valid") & (F.col("position") == F.col("n") - 1), "test")
             .when((F.col("group") != "valid") & (F.col("position") == F.col("n") - 2), "valid").otherwise("train"))
    return df.withColumn("split", label).drop("half")


def id_map(df: "DataFrame", id_col: str, idx_col: str, start: int) -> "DataFrame":
    """Contiguous integer ids ``start, start+1, ...`` over the sorted distinct values of ``id_col``."""
    from pyspark.sql import functions as F
    from pyspark.sql.window import Window

    ids = df.select(id_col).distinct()
    return ids.select((F.row_number().over(Window.orderBy(id_col)) - 1 + start).cast("int").alias(idx_col),
                      F.col(id_col).cast("string"))


def to_sequences(df: "DataFrame", users: "DataFrame", items: "DataFrame") -> "DataFrame":
    """Join the id maps in and keep the ``sequences`` columns."""
    from pyspark.sql import functions as F

    return (df.join(users, "user_id").join(items, "item_id")
              .select("user_idx", "item_idx", F.col("position").cast("int"), "split"))
