"""The sequence-file layout with dates (``interactions.tsv``) and item metadata (``items_meta.tsv``): a day ``ds``
holds every interaction dated on or before it, ties within a day in the file's order; price, brand and category
path reach the items table. On a hand-made folder and on the real Amazon Beauty files."""
from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest

from features.errors import DataError
from jobs import ingest
from jobs.warehouse import read_arrow

pytestmark = pytest.mark.slow
BEAUTY = Path(__file__).resolve().parents[3] / "shared" / "datasets" / "amazon-beauty"


def _tsv(path: Path, header: list[str], rows: list[list]) -> None:
    with path.open("w", newline="") as fh:
        w = csv.writer(fh, delimiter="\t", lineterminator="\n")
        w.writerow(header)
        w.writerows(rows)


@pytest.fixture
def folder(tmp_path) -> Path:
    d = tmp_path / "shop"
    d.mkdir()
    # user 1: two items on day 1 (file order 3 then 1), one on day 2; user 2: day 2 and day 3; user 3: day 3 only
    _tsv(d / "interactions.tsv", ["user_id", "item_id", "date"],
         [[1, 3, "2014-07-01"], [1, 1, "2014-07-01"], [2, 2, "2014-07-02"], [1, 2, "2014-07-02"],
          [2, 4, "2014-07-03"], [3, 1, "2014-07-03"]])
    _tsv(d / "items.tsv", ["item_id", "asin", "title", "attributes"],
         [[i, f"A{i}", f"Item {i}", "Acme|Nails"] for i in range(1, 5)])
    _tsv(d / "items_meta.tsv", ["item_id", "price", "brand", "category_path"],
         [[1, "12.50", "OPI", "Beauty|Makeup|Nails"], [2, "", "", ""], [3, "3.04", "Essie", "Beauty|Skin Care"]])
    _tsv(d / "users.tsv", ["user_id", "reviewerID"], [[1, "R1"], [2, "R2"], [3, "R3"]])
    (d / "sequences.txt").write_text("this file is not read when interactions.tsv is there\n")
    return d


def _stage(home: Path, ds: str, path: Path) -> dict:
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    counts = ingest.run(str(home), ds, {"source": "sequences", "path": str(path)}, "local[2]")
    return {"n": counts, **{t: read_arrow(home, t, ds, zone=ingest.STAGING).to_pylist()
                            for t in ("interactions", "items", "users")}}


def test_a_day_holds_what_is_dated_on_or_before_it_in_file_order(folder, tmp_path):
    day2 = _stage(tmp_path / "home", "2014-07-02", folder)
    assert day2["n"] == {"interactions": 4, "items": 3, "users": 2}
    inter = sorted(day2["interactions"], key=lambda r: (r["user_id"], r["timestamp"], r["event_order"]))
    assert [(r["user_id"], r["item_id"]) for r in inter] == [("1", "3"), ("1", "1"), ("1", "2"), ("2", "2")]
    assert inter[0]["timestamp"] == inter[1]["timestamp"] == 1404172800  # 2014-07-01T00:00Z
    items = {r["item_id"]: r for r in day2["items"]}
    assert items["1"]["price"] == 12.5 and items["1"]["brand"] == "OPI"
    assert items["1"]["categories"] == ["Beauty", "Makeup", "Nails"]
    assert items["2"]["price"] is None and items["2"]["categories"] == ["Acme", "Nails"]   # empty meta: keeps its own
    day3 = _stage(tmp_path / "home", "2014-07-03", folder)
    assert day3["n"] == {"interactions": 6, "items": 4, "users": 3}
    with pytest.raises(DataError, match="no interaction is dated on or before ds=2014-06-30"):
        _stage(tmp_path / "home", "2014-06-30", folder)


def test_bad_dates_and_prices_are_refused_naming_the_file(folder, tmp_path):
    with (folder / "interactions.tsv").open("a") as fh:
        fh.write("3\t2\t07/04/2014\n")
    with pytest.raises(DataError, match=r"interactions.tsv.*date that is not YYYY-MM-DD.*07/04/2014"):
        _stage(tmp_path / "home", "2014-07-05", folder)
    (folder / "interactions.tsv").write_text("user_id\titem_id\tdate\n1\t1\t2014-07-01\n")
    with (folder / "items_meta.tsv").open("a") as fh:
        fh.write("4\tcheap\t\t\n")
    with pytest.raises(DataError, match=r"items_meta.tsv.*price that is not a number.*cheap"):
        _stage(tmp_path / "home", "2014-07-05", folder)


@pytest.mark.skipif(not (BEAUTY / "interactions.tsv").exists(), reason="needs ../shared/datasets/amazon-beauty")
def test_real_beauty_first_of_july_2014(tmp_path):
    with (BEAUTY / "interactions.tsv").open() as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    want = [r for r in rows if r["date"] <= "2014-07-01"]
    day = _stage(tmp_path / "home", "2014-07-01", BEAUTY)
    assert day["n"] == {"interactions": len(want), "users": len({r["user_id"] for r in want}),
                        "items": len({r["item_id"] for r in want})}
    # the order within a user is the file's (the sequence order), ties within a day included
    got = sorted(day["interactions"], key=lambda r: (int(r["user_id"]), r["timestamp"], r["event_order"]))
    assert [(r["user_id"], r["item_id"]) for r in got] == [(r["user_id"], r["item_id"]) for r in
                                                           sorted(want, key=lambda r: int(r["user_id"]))]
    # every Beauty item has a category path in items_meta.tsv (root first), most a price and a brand
    items = day["items"]
    assert all(i["categories"][0] == "Beauty" for i in items)
    assert sum(i["price"] is not None for i in items) > 0.9 * len(items)
    assert sum(i["brand"] is not None for i in items) > 0.8 * len(items)
