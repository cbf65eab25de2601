"""The Amazon-dump adapter through Spark: 2014 (gzip, Python-literal meta) and 2023 (JSON lines) to a split."""
from __future__ import annotations

import gzip
import json
import os

import pytest

from jobs.warehouse import read_arrow
from pipelines import cli

pytestmark = pytest.mark.slow
DS = "2026-02-01"


def _write(path, lines, gz: bool) -> None:
    data = ("\n".join(lines) + "\n").encode()
    path.write_bytes(gzip.compress(data) if gz else data)


def _run(tmp_path, reviews: str, meta: str) -> int:
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    return cli.main(["run", "--home", str(tmp_path / "home"), "--ds", DS, "--until", "split",
                     "--set", "data.source=amazon", "--set", f"data.path={tmp_path}",
                     "--set", f"data.reviews_file={reviews}", "--set", f"data.meta_file={meta}",
                     "--set", "validate.min_interactions=5"])


def test_2014_dump(tmp_path):
    reviews = [json.dumps({"reviewerID": f"R{u}", "asin": f"B{i}", "overall": 5.0, "unixReviewTime": 1_400_000_000 + 86400 * i})
               for u in range(4) for i in range(u, u + 4)]
    meta = [repr({"asin": f"B{i}", "title": f"Item {i}", "categories": [["Beauty", "Skin Care"]], "price": 9.5, "brand": "Acme"})
            for i in range(8)]
    _write(tmp_path / "reviews_Beauty_5.json.gz", reviews, gz=True)
    _write(tmp_path / "meta_Beauty.json.gz", meta, gz=True)
    assert _run(tmp_path, "reviews_Beauty_5.json.gz", "meta_Beauty.json.gz") == 0
    home = tmp_path / "home"
    items = read_arrow(home, "items", DS).to_pylist()
    assert len(items) == 7  # only items that were reviewed (B0..B6)
    assert {tuple(i["categories"]) for i in items} == {("Beauty", "Skin Care")} and items[0]["brand"] == "Acme"
    seq = read_arrow(home, "sequences", DS)
    assert seq.num_rows == 16 and sorted(seq.column("split").to_pylist()).count("test") == 4
    summary = json.loads((home / "runs" / DS / "summary.json").read_text())
    assert summary["tables"]["interactions"] == 16 and summary["tables"]["train"] == 8


def test_2023_jsonl(tmp_path):
    reviews = [json.dumps({"user_id": f"U{u}", "parent_asin": f"P{i}", "asin": f"A{i}", "rating": 4.0,
                           "timestamp": 1_600_000_000_000 + 1000 * i}) for u in range(3) for i in range(5)]
    meta = [json.dumps({"parent_asin": f"P{i}", "title": f"Thing {i}", "store": "Shop", "categories": ["Home"],
                        "price": None, "description": ["Nice", "thing"]}) for i in range(5)]
    _write(tmp_path / "reviews.jsonl", reviews, gz=False)
    _write(tmp_path / "meta.jsonl", meta, gz=False)
    assert _run(tmp_path, "reviews.jsonl", "meta.jsonl") == 0
    inter = read_arrow(tmp_path / "home", "interactions", DS).to_pylist()
    assert len(inter) == 15 and min(r["timestamp"] for r in inter) == 1_600_000_000  # ms -> s
    item = {r["item_id"]: r for r in read_arrow(tmp_path / "home", "items", DS).to_pylist()}["P0"]
    assert item["brand"] == "Shop" and item["description"] == "Nice thing"
