"""The cold-item protocol's pieces on hand-made arrays (``split.cold_items``): the eval data's histories, groups,
popularity and negatives; the cold groups' metrics; the training softmax and sampled negatives that never see a
cold item; the WALS count matrix; the config's checks. The split itself (Spark) is in
``tests/integration/test_cold_items.py``.

The fixture shop has items 1..8; item 7 is cold-valid, item 8 cold-test:

  user  train    valid  test   group (test phase)   test-phase history
  u0    [1, 2]   3      8      cold (cold-test)     [1, 2, 3]
  u1    [1, 4]   7      -      - (cold-valid user)  [1, 4]      (the cold valid target is never history)
  u2    [2, 5]   6      1      warm                 [2, 5, 6]
  u3    [3]      4      5      warm                 [3, 4]
"""
from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pytest
import torch

from features.interactions import count_matrix
from models.llmrec import ranking_loss
from models.sasrec import ce_loss
from pipelines.config import ConfigError, load_config
from pipelines.evaluation.protocol import (
    COLD_TEST,
    COLD_VALID,
    Csr,
    EvalData,
    cold_probe,
    draw_negatives,
    evaluate,
    from_sequences,
)
from pipelines.training.ranking import sample_items, training_exclude

# one score per item for every user: the two cold items score highest
ITEM_SCORES = np.array([0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.9, 0.8], np.float32)


class Constant:
    """Every user gets ``ITEM_SCORES`` (or the given row) in both phases."""

    def __init__(self, row: np.ndarray = ITEM_SCORES) -> None:
        self.row = row

    def score(self, users: np.ndarray, phase: str) -> np.ndarray:
        return np.tile(self.row, (len(users), 1))


def shop(cold: bool = True) -> EvalData:
    train = Csr(np.array([0, 2, 4, 6, 7], np.int64), np.array([1, 2, 1, 4, 2, 5, 3], np.int32))
    flags = np.array([0, 0, 0, 0, 0, 0, 0, COLD_VALID, COLD_TEST], np.int8) if cold else None
    return EvalData(4, 8, train, np.array([3, 7, 6, 4], np.int32), np.array([8, 0, 1, 5], np.int32), flags)


# ----------------------------------------------------------------------------- eval data

def test_the_sequences_and_cold_items_tables_give_the_flags():
    seq = pa.table({"user_idx": pa.array([0, 0, 0, 1], pa.int32()), "item_idx": pa.array([1, 2, 3, 2], pa.int32()),
                    "position": pa.array([0, 1, 2, 0], pa.int32()), "split": ["train", "valid", "test", "valid"]})
    cold = pa.table({"item_idx": pa.array([3, 2], pa.int32()), "item_id": ["c", "b"], "half": ["test", "valid"]})
    assert from_sequences(seq, 2, 4).cold is None                                  # the protocol off
    assert from_sequences(seq, 2, 4, cold).cold.tolist() == [0, 0, COLD_VALID, COLD_TEST, 0]


def test_a_cold_valid_target_is_never_history_and_groups_split_the_users():
    d = shop()
    t = d.history("test")
    assert [t.indices[t.indptr[u]:t.indptr[u + 1]].tolist() for u in range(4)] == [[1, 2, 3], [1, 4], [2, 5, 6], [3, 4]]
    g = d.groups("test")
    assert g["cold"].tolist() == [True, False, False, False] and g["warm"].tolist() == [False, False, True, True]
    g = d.groups("valid")                     # the cold-valid users: the group choices are made on
    assert g["cold"].tolist() == [False, True, False, False] and g["warm"].tolist() == [True, False, True, True]
    assert shop(cold=False).groups("test") == {}
    assert d.cold_mask().tolist() == [False] * 7 + [True, True]


def test_popularity_never_counts_a_cold_item():
    assert shop().popularity("test").tolist() == [0, 2, 2, 2, 2, 1, 1, 0, 0]
    assert shop(cold=False).popularity("test").tolist() == [0, 2, 2, 2, 2, 1, 1, 1, 0]  # u1's valid 7 counted


def test_negatives_never_hold_the_users_own_cold_valid_target():
    for seed in range(20):
        neg = draw_negatives(shop(), 4, seed)
        assert 7 not in neg[1]                                   # u1 touched 7 (valid) though it is not history
        assert sorted(neg[0]) == [4, 5, 6, 7]                    # u0 touched 1, 2, 3 and 8: four left
    plain = shop(cold=False)
    assert (draw_negatives(plain, 4, 3) == draw_negatives(EvalData(4, 8, plain.train, plain.valid, plain.test), 4, 3)).all()


# ----------------------------------------------------------------------------- metrics

def test_cold_probe_ranks_among_cold_items_and_shares_ties():
    s = np.tile(ITEM_SCORES, (2, 1))
    cand = np.ones_like(s, bool)
    cand[:, 0] = False
    cand[0, [1, 2, 3]] = False                                   # u0's history
    ts = s[[0, 1], [8, 5]]
    beats = (s >= ts[:, None]) & cand
    cold = shop().cold_mask()
    only, share = cold_probe(s, beats, cand, cold, k=3)
    assert only[0] == 1                                          # target 8 (cold) behind 7 among the cold items
    assert share.tolist() == pytest.approx([2 / 3, 2 / 3])       # top 3: 7, 8, then 6
    flat = np.ones_like(s)                                       # every candidate tied: the places are shared out
    _, share = cold_probe(flat, cand, cand, cold, k=3)
    assert share.tolist() == pytest.approx([2 / 5, 2 / 8])       # cold share of the candidates, not an id order
    nan = s.copy()
    nan[:, 7] = np.nan                                           # a NaN score is the worst: 7 is last
    _, share = cold_probe(nan, cand, cand, cold, k=3)
    assert share.tolist() == pytest.approx([1 / 3, 1 / 3])


def test_evaluate_adds_the_cold_and_warm_groups_exactly():
    d = shop()
    neg = draw_negatives(d, 3, 0)
    out = evaluate(Constant(), d, neg, "test", ks=(1, 3))
    # u0 (target 8; candidates 4, 5, 6, 7, 8): 7 beats it -> rank 1; among the cold items {7, 8} too
    # u2 (target 1; candidates 1, 3, 4, 7, 8) -> 4; u3 (target 5; candidates 1, 2, 5, 6, 7, 8) -> 3
    assert out["cold"]["full"] == pytest.approx({"HR@1": 0, "HR@3": 1, "NDCG@1": 0, "NDCG@3": 1 / math.log2(3),
                                                 "MRR": 0.5, "users": 1})
    assert out["cold"]["cold_only"]["MRR"] == 0.5 and out["cold"]["cold_only"]["users"] == 1
    assert out["warm"]["full"]["MRR"] == pytest.approx((1 / 5 + 1 / 4) / 2) and out["warm"]["full"]["users"] == 2
    # fewer than 10 candidates: every one is in the top 10 (2 cold of 5, 2 of 6); the catalogue is 2/8 cold
    assert out["warm"]["cold_share_top10"] == pytest.approx({"share": (2 / 5 + 2 / 6) / 2, "users": 2,
                                                             "catalogue": 0.25})
    assert out["full"]["users"] == 3 and set(out["warm"]) >= {"full", "sampled3"}
    valid = evaluate(Constant(), d, neg, "valid", ks=(1,))
    assert valid["cold"]["full"]["users"] == 1 and valid["warm"]["full"]["users"] == 3   # u1 is the cold-valid one
    assert "cold" not in evaluate(Constant(), shop(cold=False), neg, "test", ks=(1,))


def test_cold_items_are_candidates_of_the_full_ranking():
    row = np.zeros(9, np.float32)
    row[8] = 1.0                                                 # only the cold-test item scores: u0's target
    keep: dict = {}
    evaluate(Constant(row), shop(), draw_negatives(shop(), 3, 0), "test", ks=(1,), keep=keep)
    assert keep["full"][keep["cold"]].tolist() == [0]            # ranked first over all items
    assert keep["cold"].tolist() == [True, False, False] and keep["users"].tolist() == [0, 2, 3]


def test_the_report_shows_the_groups_and_the_top10_share(tmp_path):
    from pipelines.context import StageContext
    from pipelines.evaluation.report import cold_section

    d = shop()
    neg = draw_negatives(d, 3, 0)
    m = {"m": {**evaluate(Constant(), d, neg, "test"), "valid": evaluate(Constant(), d, neg, "valid")}}
    m["m"]["cold"]["users_dropped"] = 2
    text = "\n".join(cold_section(StageContext(load_config(None, ["split.cold_items=0.1"]), "2026-01-01", tmp_path), m))
    assert "## Cold items" in text and "10% of items held out of training (`split.cold_by=latest`" in text
    assert "| m | cold | 1 | 1.0000 | 0.6309 |" in text and "| m | warm | 2 |" in text and "| m | valid cold | 1 |" in text
    assert f"| m | {(2 / 5 + 2 / 6) / 2:.4f} | 0.2500 | 2 | 2 |" in text
    assert cold_section(StageContext(load_config(), "2026-01-01", tmp_path), {"m": {"full": {}}}) == []


# ----------------------------------------------------------------------------- training

def test_the_training_softmax_never_sees_a_cold_item():
    torch.manual_seed(0)
    exclude = training_exclude(shop())
    h = torch.randn(2, 3, 4)
    tgt = torch.tensor([[1, 2, 0], [3, 0, 6]])
    items = torch.randn(9, 4, requires_grad=True)
    loss = ce_loss(h, tgt, items, exclude=exclude)
    warm = h[tgt != 0] @ items[:7].T                             # the softmax over the warm items alone
    warm[:, 0] = -torch.inf
    assert loss.item() == pytest.approx(torch.nn.functional.cross_entropy(warm, tgt[tgt != 0]).item(), rel=1e-6)
    loss.backward()
    assert (items.grad[7:] == 0).all() and (items.grad[1:7] != 0).any()   # cold rows get no gradient
    items.grad = None
    ce_loss(h, tgt, items).backward()
    assert (items.grad[7:] != 0).all()                           # without it they would be pushed down
    q = torch.randn(3, 4)
    items.grad = None
    ranking_loss(q, items, torch.tensor([1, 2, 3]), 3.0, exclude=exclude).backward()
    assert (items.grad[7:] == 0).all()


def test_sampled_negatives_are_never_cold_and_unchanged_without_the_protocol():
    exclude = training_exclude(shop())
    drawn = sample_items(np.random.default_rng(0), 8, (200, 5), exclude)
    assert drawn.min() >= 1 and not np.isin(drawn, [7, 8]).any() and set(np.unique(drawn)) == set(range(1, 7))
    assert training_exclude(shop(cold=False)) is None
    assert (sample_items(np.random.default_rng(3), 8, (4, 5)) == np.random.default_rng(3).integers(1, 9, (4, 5))).all()


def test_count_matrix_leaves_the_cold_columns_empty():
    seq = pa.table({"user_idx": pa.array([0, 0, 1, 1], pa.int32()), "item_idx": pa.array([1, 7, 2, 7], pa.int32()),
                    "position": pa.array([0, 1, 0, 1], pa.int32()), "split": ["train", "valid", "train", "test"]})
    m = count_matrix(seq, 2, 8, ("train", "valid"), pa.array([7, 8], pa.int32()))
    assert m.toarray()[:, 7].sum() == 0 and m.sum() == 2
    assert count_matrix(seq, 2, 8, ("train", "valid")).toarray()[0, 7] == 1


def test_a_warm_start_never_brings_back_a_held_out_items_trained_row(tmp_path):
    from features import schemas
    from jobs import warehouse
    from models.configs import SASRecConfig
    from models.sasrec import SASRec
    from pipelines.backends.wals import warm_init
    from pipelines.context import StageContext
    from pipelines.refresh import carry_item_rows, uncarried_cold

    items = ["", "a", "b", "c"]                                  # c was trained on the base day, is cold today
    flags = np.array([0, 0, 0, COLD_TEST], np.int8)
    assert uncarried_cold(items, None) is items and uncarried_cold(items, flags)[:3] == items[:3]
    model = SASRec(SASRecConfig(hidden=4, n_layers=1, n_heads=1), 3)
    trained = {"item_emb.weight": torch.full((4, 4), 7.0)}
    state, info = carry_item_rows(trained, items, uncarried_cold(items, flags), model)
    assert (state["item_emb.weight"][:3] == 7).all() and (state["item_emb.weight"][3] != 7).all()
    assert info["new_items"] == 1
    cfg = load_config(None, ["wals.factors=2"])
    ctx = StageContext(cfg, "2026-01-02", tmp_path)
    warehouse.write_arrow(pa.table({"item_idx": pa.array([3], pa.int32()), "item_id": ["c"], "half": ["test"]},
                                   schema=schemas.COLD_ITEMS), tmp_path, "cold_items", ctx.ds)
    for table, ids, col in (("user_factors", ["u"], "user"), ("item_factors", items[1:], "item")):
        warehouse.write_arrow(pa.table({f"{col}_id": ids, f"{col}_idx": pa.array(range(len(ids)), pa.int32()),
                                        "factors": [[7.0, 7.0]] * len(ids)}, schema=schemas.TABLES[table]),
                              tmp_path, table, "2026-01-01", "scratch")
    (_, item_rows), info = warm_init(ctx, "2026-01-01", "scratch", ["u"], items, cfg.wals)
    assert (item_rows[1:3] == 7).all() and (item_rows[3] < 0.01).all() and info["items_carried"] == 2


# ----------------------------------------------------------------------------- config

def test_the_settings_default_off_and_are_checked():
    cfg = load_config()
    assert (cfg.split.cold_items, cfg.split.cold_by, cfg.split.cold_seed) == (0.0, "latest", 2024)
    assert load_config(None, ["split.cold_items=0.1", "split.cold_by=random"]).split.cold_by == "random"
    with pytest.raises(ConfigError, match=r"split\.cold_items' must be in \[0, 0\.5\)"):
        load_config(None, ["split.cold_items=0.5"])
    with pytest.raises(ConfigError, match=r"split\.cold_by' must be one of"):
        load_config(None, ["split.cold_by=newest"])
