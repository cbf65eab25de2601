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
