"""pipelines.cache: the content-addressed SQLite cache."""
from __future__ import annotations

from pipelines.cache import Cache


def test_put_get_replace_and_persist(tmp_path):
    path = tmp_path / "sub" / "c.sqlite"
    with Cache(path) as c:
        assert len(c) == 0 and c.get_many(["a"]) == {}
        c.put_many({"a": b"1", "b": b"2"})
        c.put_many({})                                                  # a no-op, not an error
        c.put_many({"a": b"3"})                                         # replaced, not duplicated
        assert c.get_many(["a", "b", "missing", "a"]) == {"a": b"3", "b": b"2"}
        assert len(c) == 2
    with Cache(path) as again:                                          # committed: a new process sees it
        assert again.get_many(["a", "b"]) == {"a": b"3", "b": b"2"}


def test_many_keys_are_read_in_chunks(tmp_path):
    items = {f"k{i}": str(i).encode() for i in range(2500)}
    with Cache(tmp_path / "c.sqlite") as c:
        c.put_many(items)
        assert c.get_many(list(items), chunk=900) == items              # three SELECTs under SQLite's variable cap
        assert c.get_many([f"k{i}" for i in range(0, 2500, 7)], chunk=10) == {
            f"k{i}": str(i).encode() for i in range(0, 2500, 7)}
