"""jobs.split on a hand-made ``interactions`` partition: time order with tie-breaks, leave-one-out, dropped
short users, contiguous ids. Spark in local mode."""
from __future__ import annotations

import json
import os

os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")

import pyarrow as pa  # noqa: E402
import pytest  # noqa: E402

from features import schemas  # noqa: E402
from jobs import split as job  # noqa: E402
from jobs import warehouse  # noqa: E402

pytestmark = pytest.mark.slow

DS = "2026-01-05"
SPARK = ("local[2]", {"spark.sql.shuffle.partitions": "2", "spark.default.parallelism": "2"})

# (user_id, item_id, timestamp, event_order)
ROWS = [
    # u1: c (50) first; b, a, d all at 100: b has event_order 0; a and d tie on (100, 1) -> item id a < d.
    #     order c, b, a, d -> train c, b; valid a; test d
    ("u1", "b", 100, 0), ("u1", "a", 100, 1), ("u1", "c", 50, 2), ("u1", "d", 100, 1),
    # u2: a (10), e (20), a (30) -> train a; valid e; test a (a repeat stays a separate event)
    ("u2", "a", 10, 5), ("u2", "e", 20, 3), ("u2", "a", 30, 4),
    # u3: only 2 events -> dropped under the default policy (f appears nowhere else)
    ("u3", "f", 1, 0), ("u3", "b", 2, 1),
    # u10: c (5, 6) before e (5, 7) on event_order, then b (6) -> train c; valid e; test b
    ("u10", "e", 5, 7), ("u10", "c", 5, 6), ("u10", "b", 6, 0),
]
# Users by sorted id: u1 -> 0, u10 -> 1, u2 -> 2 (string order); items a..e -> 1..5
EXPECTED = sorted([
    (0, 3, 0, "train"), (0, 2, 1, "train"), (0, 1, 2, "valid"), (0, 4, 3, "test"),
    (1, 3, 0, "train"), (1, 5, 1, "valid"), (1, 2, 2, "test"),
    (2, 1, 0, "train"), (2, 5, 1, "valid"), (2, 1, 2, "test"),
])


def _interactions(rows) -> pa.Table:
    u, i, t, e = zip(*rows, strict=True)
    return pa.table({"user_id": list(u), "item_id": list(i), "timestamp": pa.array(t, pa.int64()),
                     "event_order": pa.array(e, pa.int64()),
                     "rating": pa.array([5.0] * len(rows), pa.float32())}, schema=schemas.INTERACTIONS)


@pytest.fixture
def home(tmp_path):
    warehouse.write_arrow(_interactions(ROWS), tmp_path, "interactions", DS)
    return tmp_path


def _table(home, name) -> list[tuple]:
    t = warehouse.read_arrow(home, name, DS)
    schemas.check_schema(name, t.schema)  # names and types (Spark does not keep the non-null flags)
    assert t.column_names == schemas.TABLES[name].names, name
    return sorted(zip(*(t.column(c).to_pylist() for c in t.column_names), strict=True))


def test_split_exact(home):
    counts = job.run(str(home), DS, {"kcore": 0, "min_interactions": 3, "short_policy": "drop"}, *SPARK)
    assert _table(home, "sequences") == EXPECTED
    assert _table(home, "user_map") == [(0, "u1"), (1, "u10"), (2, "u2")]
    assert _table(home, "item_map") == [(1, "a"), (2, "b"), (3, "c"), (4, "d"), (5, "e")]
    assert counts == {"sequences": 10, "user_map": 3, "item_map": 5, "train": 4, "valid": 3, "test": 3,
                      "users_dropped": 1, "interactions_dropped": 2, "users_evaluated": 3}


def test_split_is_independent_of_row_order(home, tmp_path_factory):
    other = tmp_path_factory.mktemp("shuffled")
    warehouse.write_arrow(_interactions(list(reversed(ROWS))), other, "interactions", DS)
    job.run(str(other), DS, {}, *SPARK)   # defaults: kcore 0, min_interactions 3, drop
    assert _table(other, "sequences") == EXPECTED


def test_short_users_kept_as_train_only(home):
    counts = job.run(str(home), DS, {"min_interactions": 3, "short_policy": "train_only"}, *SPARK)
    # u3 sorts last ("u1" < "u10" < "u2" < "u3") -> user 3; item f -> 6.
    # u3's two events (f at 1, b at 2) are both train.
    seq = _table(home, "sequences")
    assert [r for r in seq if r[0] == 3] == [(3, 2, 1, "train"), (3, 6, 0, "train")]
    assert [r for r in seq if r[0] != 3] == EXPECTED
    assert _table(home, "user_map") == [(0, "u1"), (1, "u10"), (2, "u2"), (3, "u3")]
    assert _table(home, "item_map")[-1] == (6, "f")
    assert counts["users_dropped"] == 0 and counts["interactions_dropped"] == 0
    assert (counts["train"], counts["valid"], counts["test"], counts["users_evaluated"]) == (6, 3, 3, 3)


def test_kcore_two(home):
    counts = job.run(str(home), DS, {"kcore": 2, "min_interactions": 3}, *SPARK)
    # round 1 drops items d and f (1 interaction each); round 2 drops u3 (left with only b).
    # u1: c (50), b (100, 0), a (100, 1) -> train c; valid b; test a. u10 and u2 unchanged.
    # items a, b, c, e -> 1..4
    assert _table(home, "sequences") == sorted([
        (0, 3, 0, "train"), (0, 2, 1, "valid"), (0, 1, 2, "test"),
        (1, 3, 0, "train"), (1, 4, 1, "valid"), (1, 2, 2, "test"),
        (2, 1, 0, "train"), (2, 4, 1, "valid"), (2, 1, 2, "test"),
    ])
    assert counts["users_dropped"] == 1 and counts["interactions_dropped"] == 3


def test_main_writes_the_job_record(home, capsys):
    params = json.dumps({"kcore": 0, "min_interactions": 3, "short_policy": "drop"})
    rc = job.main(["--home", str(home), "--ds", DS, "--master", SPARK[0],
                   "--spark-conf", json.dumps(SPARK[1]), "--params", params])
    assert rc == 0
    rec = json.loads((home / "runs" / DS / "jobs" / "split.json").read_text())
    assert rec["sequences"] == 10 and rec["users_dropped"] == 1
    assert _table(home, "sequences") == EXPECTED


def test_main_without_interactions_fails_naming_the_partition(tmp_path, capsys):
    rc = job.main(["--home", str(tmp_path), "--ds", DS, "--params", "{}"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "split failed" in err and "interactions" in err and f"ds={DS}" in err


def test_no_user_long_enough_fails(tmp_path):
    warehouse.write_arrow(_interactions([("u", "a", 1, 0), ("u", "b", 2, 1)]), tmp_path, "interactions", DS)
    with pytest.raises(job.DataError, match="no user has at least 3 interactions"):
        job.run(str(tmp_path), DS, {"min_interactions": 3}, *SPARK)
    assert not warehouse.partition_path(tmp_path, "sequences", DS).exists()
