"""pipelines.promotion on a hand-written day: the evaluation set, and top-k scoring of a served model."""
from __future__ import annotations

import json
import math

import numpy as np
import pyarrow as pa
import pytest

from jobs import common
from pipelines.config import load_config
from pipelines.promotion import eval_set, latest_successful_ds, score_topk
from pipelines.serving import TopKModel, save_scorer

DS = "2026-01-01"
ITEMS = ["i1", "i2", "i3", "i4", "i5", "i6"]       # item_idx 1..6
# u0: train i1 i2, valid i3, test i4;  u1: train i5, valid i2, test i5 (a repeat);  u2: train i1 only (no test)
SEQ = [(0, 1, 0, "train"), (0, 2, 1, "train"), (0, 3, 2, "valid"), (0, 4, 3, "test"),
       (1, 5, 0, "train"), (1, 2, 1, "valid"), (1, 5, 2, "test"), (2, 1, 0, "train")]


@pytest.fixture
def home(tmp_path):
    u, i, p, s = zip(*SEQ, strict=True)
    common.write_arrow(pa.table({"user_idx": pa.array(u, pa.int32()), "item_idx": pa.array(i, pa.int32()),
                                 "position": pa.array(p, pa.int32()), "split": pa.array(s, pa.string())}),
                       tmp_path, "sequences", DS)
    common.write_arrow(pa.table({"user_idx": pa.array([0, 1, 2], pa.int32()),
                                 "user_id": pa.array(["u0", "u1", "u2"], pa.string())}), tmp_path, "user_map", DS)
    common.write_arrow(pa.table({"item_idx": pa.array(range(1, 7), pa.int32()),
                                 "item_id": pa.array(ITEMS, pa.string())}), tmp_path, "item_map", DS)
    return tmp_path


def test_eval_set_holds_every_test_user_with_their_earlier_items(home):
    es = eval_set(load_config(), home, DS)
    assert es == {"user_ids": ["u0", "u1"],
                  "exclude": [["i1", "i2", "i3"], ["i2"]],     # u1's repeat of its target is not excluded
                  "targets": ["i4", "i5"]}


class Served:
    """What ``mlflow.pyfunc.load_model`` returns for the serving pyfunc: ``predict(data, params)``."""

    def __init__(self, path):
        self.model = TopKModel().load(path)

    def predict(self, data, params=None):
        return self.model.predict(None, data, params)


def test_score_topk_ranks_through_the_served_top_k(home, tmp_path):
    scores = np.array([[0.0], [6], [5], [4], [3], [2], [1]], np.float32)    # item i_k scores 7 - k
    path = save_scorer(tmp_path / "m", "test", ["u0", "u1", "u2"], ["", *ITEMS], user_emb=np.ones((3, 1), np.float32),
                       item_emb=scores, item_bias=np.zeros(7, np.float32), hist_indptr=np.zeros(4, np.int64),
                       hist_indices=np.zeros(0, np.int32), top_k=5)
    es = eval_set(load_config(), home, DS)
    # u0: i1..i3 excluded -> i4 first (rank 0); u1: i2 excluded -> i1, i3, i4, i5 (rank 3)
    got = score_topk(Served(path), es["user_ids"], es["exclude"], es["targets"], (1, 3, 5))
    assert got == pytest.approx({"HR@1": 0.5, "HR@3": 0.5, "HR@5": 1.0, "NDCG@1": 0.5, "NDCG@3": 0.5,
                                 "NDCG@5": (1.0 + 1.0 / math.log2(5)) / 2, "users": 2})
    # a target beyond the list counts nowhere
    assert score_topk(Served(path), ["u1"], [["i2"]], ["i5"], (1, 2))["HR@2"] == 0.0


def test_latest_successful_ds_names_the_folder_when_there_is_none(tmp_path):
    with pytest.raises(LookupError, match="no successful run under"):
        latest_successful_ds(tmp_path)


def test_every_decision_is_kept_and_a_challenger_is_judged_on_its_own_day(home, tmp_path):
    """Two days, two versions: v1 (day 1) becomes champion, v2 (day 2) is judged on day 2 without --ds, and both
    decisions stay on record (the second used to overwrite the first, judged on whichever day had a summary)."""
    import shutil

    import mlflow

    from pipelines import promotion, registry

    ds2 = "2026-01-02"
    for table in ("sequences", "user_map", "item_map"):
        shutil.copytree(common.partition_path(home, table, DS), common.partition_path(home, table, ds2))
    cfg = load_config(None, [])
    c = registry.client(cfg, home)

    def register(ds: str, item_scores: list[float]) -> str:
        mdir = save_scorer(tmp_path / f"m-{ds}", "test", ["u0", "u1", "u2"], ["", *ITEMS],
                           user_emb=np.ones((3, 1), np.float32),
                           item_emb=np.array([[0.0], *([s] for s in item_scores)], np.float32),
                           item_bias=np.zeros(7, np.float32), hist_indptr=np.zeros(4, np.int64),
                           hist_indices=np.zeros(0, np.int32), top_k=5)
        with mlflow.start_run():
            return registry._register(c, cfg, ds, "wals", mdir, {})["version"]

    v1 = register(DS, [6, 5, 4, 3, 2, 1])
    first = promotion.promote(cfg, home, "wals", None)
    assert first["promoted"] and first["ds"] == DS and str(first["challenger"]["version"]) == v1
    v2 = register(ds2, [1, 2, 3, 6, 5, 4])  # ranks both test targets first: better
    second = promotion.promote(cfg, home, "wals", None)
    assert second["ds"] == ds2 and second["promoted"], second
    log = promotion.decisions(cfg, home, "wals")
    assert [(d["version"], d["ds"], d["decision"]) for d in log] == [(v1, DS, "promoted"), (v2, ds2, "promoted")]
    assert all(d["reason"] and d["trigger"] == "cli" and d["time"] for d in log)
    assert str(log[1]["champion"]["version"]) == v1 and "NDCG@10" in log[1]["challenger"]
    tags = c.get_model_version("wals", v1).tags
    assert json.loads(tags["promotion.00001"])["decision"] == "promoted"  # v1's own record is untouched
    assert str(c.get_model_version_by_alias("wals", "champion").version) == v2
