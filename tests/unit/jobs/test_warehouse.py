"""jobs.warehouse: the atomic partition swap, publishing from staging, schema-checked writes."""
from __future__ import annotations

import pyarrow as pa
import pytest

from features.errors import DataError
from jobs import warehouse

DS = "2026-01-01"


def _user_map(ids: list[str]) -> pa.Table:
    return pa.table({"user_idx": pa.array(range(len(ids)), pa.int32()), "user_id": pa.array(ids, pa.string())})


def test_swap_in_replaces_the_whole_partition_and_leaves_nothing_behind(tmp_path):
    final = tmp_path / "t" / "ds=x"
    final.mkdir(parents=True)
    (final / "old.parquet").write_text("old")
    new = tmp_path / "t" / "_tmp-new"
    new.mkdir()
    (new / "part.parquet").write_text("new")
    warehouse.swap_in(new, final)
    assert sorted(p.name for p in final.iterdir()) == ["part.parquet"]
    assert sorted(p.name for p in final.parent.iterdir()) == ["ds=x"]   # no _tmp-/_old- siblings left


def test_write_arrow_then_read_back_and_a_bad_schema_keeps_the_old_partition(tmp_path):
    assert warehouse.write_arrow(_user_map(["a", "b"]), tmp_path, "user_map", DS) == 2
    with pytest.raises(DataError, match=r"table 'user_map'.*column 'user_idx' has type int64, expected int32"):
        warehouse.write_arrow(pa.table({"user_idx": [0], "user_id": ["z"]}), tmp_path, "user_map", DS)
    assert warehouse.read_arrow(tmp_path, "user_map", DS).column("user_id").to_pylist() == ["a", "b"]
    assert [p.name for p in (tmp_path / "warehouse" / "user_map").iterdir()] == [f"ds={DS}"]


def test_publish_moves_a_staged_partition_into_the_warehouse(tmp_path):
    warehouse.write_arrow(_user_map(["a"]), tmp_path, "user_map", DS)                 # yesterday's good data
    with pytest.raises(FileNotFoundError, match="no staged partition .* run the ingest stage first"):
        warehouse.publish(tmp_path, "user_map", DS)
    assert warehouse.read_arrow(tmp_path, "user_map", DS).num_rows == 1               # untouched by the failure
    warehouse.write_arrow(_user_map(["a", "b", "c"]), tmp_path, "user_map", DS, zone="staging")
    dst = warehouse.publish(tmp_path, "user_map", DS)
    assert dst == tmp_path / "warehouse" / "user_map" / f"ds={DS}"
    assert warehouse.read_arrow(tmp_path, "user_map", DS).num_rows == 3
    assert not warehouse.partition_path(tmp_path, "user_map", DS, "staging").exists()


def test_read_of_a_missing_partition_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"table 'sequences' has no partition for ds=2026-01-01 at .*; run"):
        warehouse.read_arrow(tmp_path, "sequences", DS)
