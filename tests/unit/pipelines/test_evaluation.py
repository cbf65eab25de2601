"""pipelines.evaluation (protocol, popularity) on hand-made data with hand-computed ranks and metrics.

The fixture shop has items 1..6 (column 0 is padding) and three users:

  user  train    valid  test   valid-phase history   test-phase history
  u0    [1, 2]   3      4      [1, 2]                [1, 2, 3]
  u1    [5]      2      5      [5]                   [5, 2]       (test target 5 is also in the history)
  u2    [1]      -      -      [1]                   [1]          (never evaluated)
"""
from __future__ import annotations

import copy
import math

import numpy as np
import pyarrow as pa
import pytest

from pipelines.evaluation.protocol import (
    Csr,
    EvalData,
    draw_negatives,
    evaluate,
    from_sequences,
    metrics_from_ranks,
    slice_masks,
)
from pipelines.evaluation.scorers import Popularity

INF = 1e9  # a score larger than any other: used on the padding column, which must never count

# Scores per phase, one row per user, columns 0..6.
SCORES = {
    # u0, target 4 (score 5): history 1, 2, 3 (higher scores) excluded, padding excluded; candidates
    #     4 (5), 5 (6), 6 (5): one higher (5), one tie (6) -> rank 2.
    # u1, target 5 (score 4), also in the history: 2 (10) excluded as history, 5 kept; nothing
    #     else scores >= 4 -> rank 0.
    "test": np.array([
        [INF, 9, 8, 7, 5, 6, 5],
        [INF, 1, 10, 2, 3, 4, 0],
        [INF, 1, 1, 1, 1, 1, 1],
    ], np.float32),
    # u0, target 3 (score 1): history 1, 2 excluded; candidates 3 (1), 4 (0.5), 5 (0), 6 (2): one higher
    #     -> rank 1.  Item 3 is NOT excluded here (it is the valid target; only in the test history).
    # u1, target 2 (score 2): history 5 (9) excluded; candidates 1 (3), 2 (2), 3 (2), 4 (1), 6 (0): one
    #     higher (1), one tie (3) -> rank 2.
    "valid": np.array([
        [INF, 9, 9, 1, 0.5, 0, 2],
        [INF, 3, 2, 2, 1, 9, 0],
        [INF, 1, 1, 1, 1, 1, 1],
    ], np.float32),
}
# Sampled negatives (never touched by the user): u0 {5, 6}, u1 {1, 3}.
NEGATIVES = np.array([[5, 6], [1, 3], [3, 4]], np.int32)
# test:  u0 target 4 (5) vs 5 (6), 6 (5): one higher, one tie -> 2;  u1 target 5 (4) vs 1 (1), 3 (2) -> 0
# valid: u0 target 3 (1) vs 5 (0), 6 (2): one higher -> 1;          u1 target 2 (2) vs 1 (3), 3 (2) -> 2
KS = (1, 3, 5)


class Fixed:
    """A scorer that returns hand-written scores and records what it was asked."""

    def __init__(self, scores: dict[str, np.ndarray]) -> None:
        self.scores, self.calls = scores, []

    def score(self, users: np.ndarray, phase: str) -> np.ndarray:
        self.calls.append((users.tolist(), phase))
        return self.scores[phase][users]


def shop() -> EvalData:
    train = Csr(np.array([0, 2, 3, 4], np.int64), np.array([1, 2, 5, 1], np.int32))
    return EvalData(n_users=3, n_items=6, train=train,
                    valid=np.array([3, 2, 0], np.int32), test=np.array([4, 5, 0], np.int32))


def approx(x):
    return pytest.approx(x, abs=1e-12)


# ----------------------------------------------------------------------------- data structures

def test_csr_rows_and_lengths():
    c = Csr(np.array([0, 2, 2, 5], np.int64), np.array([7, 8, 1, 2, 3], np.int32))
    assert c.lengths().tolist() == [2, 0, 3]
    row, items = c.rows(np.array([2, 0]))
    assert row.tolist() == [0, 0, 0, 1, 1]
    assert items.tolist() == [1, 2, 3, 7, 8]


def test_histories_per_phase():
    d = shop()
    v = d.history("valid")
    assert v.indptr.tolist() == [0, 2, 3, 4] and v.indices.tolist() == [1, 2, 5, 1]
    t = d.history("test")  # train + valid item appended last; u2 has no valid item
    assert t.indptr.tolist() == [0, 3, 5, 6]
    assert t.indices.tolist() == [1, 2, 3, 5, 2, 1]
    assert d.targets("valid").tolist() == [3, 2, 0] and d.targets("test").tolist() == [4, 5, 0]
    with pytest.raises(ValueError, match="phase"):
        d.history("train")


def test_popularity_counts_per_phase():
    d = shop()
    assert d.popularity("valid").tolist() == [0, 2, 1, 0, 0, 1, 0]  # train only
    assert d.popularity("test").tolist() == [0, 2, 2, 1, 0, 1, 0]   # train + valid
    pop = Popularity(d)
    s = pop.score(np.array([2, 0]), "test")
    assert s.shape == (2, 7) and s.dtype == np.float32
    assert s.tolist() == [[0, 2, 2, 1, 0, 1, 0]] * 2
    assert pop.score(np.array([1]), "valid").tolist() == [[0, 2, 1, 0, 0, 1, 0]]


def test_from_sequences_orders_by_position():
    seq = pa.table({
        "user_idx": pa.array([1, 0, 0, 1, 0, 0, 1], pa.int32()),
        "item_idx": pa.array([4, 3, 1, 2, 4, 2, 3], pa.int32()),
        "position": pa.array([2, 3, 0, 0, 2, 1, 1], pa.int32()),
        "split": ["test", "test", "train", "train", "valid", "train", "valid"],
    })
    d = from_sequences(seq, n_users=2, n_items=4)
    # u0: positions 0..3 = 1, 2, 4, 3 -> train [1, 2], valid 4, test 3; u1: 2, 3, 4 -> train [2], valid 3, test 4
    assert d.train.indptr.tolist() == [0, 2, 3]
    assert d.train.indices.tolist() == [1, 2, 2]
    assert d.valid.tolist() == [4, 3] and d.test.tolist() == [3, 4]
    assert (d.n_users, d.n_items) == (2, 4)


# ----------------------------------------------------------------------------- ranks and metrics

def ranks(model, data: EvalData, phase: str, user: int, negatives: np.ndarray = NEGATIVES,
          batch: int = 8) -> tuple[int, int]:
    """(full rank, sampled rank) of one user's target, read back from ``evaluate``'s MRR = 1 / (rank + 1).

    Only ``user`` keeps a target of ``phase``; the other users' targets of that phase are zeroed (their
    histories, and ``user``'s, are unchanged).
    """
    d = copy.deepcopy(data)
    keep = d.targets(phase)[user]
    target = d.valid if phase == "valid" else d.test
    target[:] = 0
    target[user] = keep
    d._test_history = None
    out = evaluate(model, d, negatives, phase, ks=(1,), batch=batch)
    assert out["full"]["users"] == 1
    sampled = out[f"sampled{negatives.shape[1]}"]
    return round(1 / out["full"]["MRR"]) - 1, round(1 / sampled["MRR"]) - 1


def test_full_ranks_test_phase():
    d = shop()
    # u0: rank 2 (history 1, 2, 3 and padding excluded, tie counts against); u1: rank 0 (target kept)
    assert ranks(Fixed(SCORES), d, "test", 0)[0] == 2
    assert ranks(Fixed(SCORES), d, "test", 1)[0] == 0


def test_full_ranks_valid_phase():
    d = shop()
    assert ranks(Fixed(SCORES), d, "valid", 0)[0] == 1
    assert ranks(Fixed(SCORES), d, "valid", 1)[0] == 2


def test_ranks_do_not_depend_on_batch_size():
    d = shop()
    for batch in (1, 2, 2048):
        out = evaluate(Fixed(SCORES), d, NEGATIVES, "test", ks=KS, batch=batch)
        assert out["full"]["MRR"] == approx((1 / 3 + 1) / 2)


def test_padding_column_is_never_a_candidate():
    # every real item scores 0 except the target; padding scores highest
    d = shop()
    s = np.zeros((3, 7), np.float32)
    s[:, 0] = 100.0
    s[0, 4] = 1.0
    assert ranks(Fixed({"test": s}), d, "test", 0)[0] == 0


def test_constant_scores_rank_target_last_among_candidates():
    # ties count against the target: u0 test has 3 candidates (4, 5, 6) -> rank 2; u1 has 5 (1, 3, 4, 5, 6)
    # -> rank 4; sampled: 2 negatives tie -> rank 2
    d = shop()
    s = np.ones((3, 7), np.float32)
    assert ranks(Fixed({"test": s}), d, "test", 0) == (2, 2)
    assert ranks(Fixed({"test": s}), d, "test", 1) == (4, 2)


def test_history_item_scoring_higher_does_not_count():
    # u0 test: history items 1, 2, 3 score above the target; everything else below -> rank 0
    d = shop()
    s = np.zeros((3, 7), np.float32)
    s[0, [1, 2, 3]] = 5.0
    s[0, 4] = 1.0
    assert ranks(Fixed({"test": s}), d, "test", 0)[0] == 0


def test_valid_target_is_excluded_at_test_time_but_not_at_valid_time():
    # u0: item 3 is the valid target. At test time it is history (excluded); at valid time it is the target.
    d = shop()
    s = np.zeros((3, 7), np.float32)
    s[0, 3] = 5.0   # item 3
    s[0, 4] = 1.0   # item 4 (test target)
    assert ranks(Fixed({"test": s}), d, "test", 0)[0] == 0
    # valid: target 3 (5) is beaten only by item 4 (9), which is a candidate at valid time; 1, 2 excluded
    s2 = s.copy()
    s2[0, 4] = 9.0
    assert ranks(Fixed({"valid": s2}), d, "valid", 0)[0] == 1


def test_nan_scores_never_beat_the_target():
    # u0 test as in SCORES (rank 2), but item 5 (the one candidate above the target) scores NaN -> rank 1
    d = shop()
    s = SCORES["test"].copy()
    s[0, 5] = np.nan
    assert ranks(Fixed({"test": s}), d, "test", 0) == (1, 1)


def test_nan_target_ranks_last():
    # u0 test target 4 scores NaN: it is last among the 3 candidates (4, 5, 6) and the 2 negatives
    d = shop()
    s = SCORES["test"].copy()
    s[0, 4] = np.nan
    assert ranks(Fixed({"test": s}), d, "test", 0) == (2, 2)


def test_minus_inf_target_ties_only_with_candidates():
    # a model that masks items itself may give the target -inf: excluded history (1, 2, 3) and padding do
    # not tie with it; of the candidates 4, 5, 6 two are above -> rank 2. u1 (candidates 1, 3, 4, 5, 6) -> 4
    d = shop()
    s = np.full((3, 7), -np.inf, np.float32)
    s[0, 5] = 1.0
    assert ranks(Fixed({"test": s}), d, "test", 0) == (2, 2)
    assert ranks(Fixed({"test": s}), d, "test", 1) == (4, 2)


def test_scorer_output_is_not_modified():
    d = shop()
    scores = {k: v.copy() for k, v in SCORES.items()}
    evaluate(Fixed(scores), d, NEGATIVES, "test", ks=KS, batch=8)
    np.testing.assert_array_equal(scores["test"], SCORES["test"])


def test_sampled_ranks():
    d = shop()
    m = Fixed(SCORES)
    assert [ranks(m, d, "test", u)[1] for u in (0, 1)] == [2, 0]
    assert [ranks(m, d, "valid", u)[1] for u in (0, 1)] == [1, 2]


def test_sampled_ranks_use_only_the_given_negatives():
    # u0 test target 4 scores 5. The sampled rank compares it with the negatives alone.
    d = shop()
    neg = NEGATIVES.copy()
    neg[0] = [6, 6]          # both tie with the target -> rank 2 (ties count against it)
    assert ranks(Fixed(SCORES), d, "test", 0, negatives=neg)[1] == 2
    neg[0] = [3, 6]          # 3 (7) beats it, 6 (5) ties -> rank 2
    assert ranks(Fixed(SCORES), d, "test", 0, negatives=neg)[1] == 2
    wide = np.array([[6, 5, 1], [1, 3, 4], [2, 3, 4]], np.int32)  # 3 negatives per user
    # u0: 6 ties, 5 (6) and 1 (9) beat the target -> 3; u1 (target 5, score 4): 1 (1), 3 (2), 4 (3) -> 0
    assert ranks(Fixed(SCORES), d, "test", 0, negatives=wide)[1] == 3
    assert ranks(Fixed(SCORES), d, "test", 1, negatives=wide)[1] == 0
    # the full rank of u0 does not depend on the negatives
    assert ranks(Fixed(SCORES), d, "test", 0, negatives=wide)[0] == 2


def test_metrics_from_ranks_exact():
    # ranks 0, 1, 3, 10
    out = metrics_from_ranks(np.array([0, 1, 3, 10]), (1, 5, 10))
    assert out["users"] == 4
    assert out["HR@1"] == approx(1 / 4)
    assert out["HR@5"] == approx(3 / 4)
    assert out["HR@10"] == approx(3 / 4)   # rank 10 is the 11th place: outside the top 10
    assert out["NDCG@1"] == approx(1 / 4)
    ndcg5 = (1 / math.log2(2) + 1 / math.log2(3) + 1 / math.log2(5)) / 4
    assert out["NDCG@5"] == approx(ndcg5)
    assert out["NDCG@10"] == approx(ndcg5)
    assert out["MRR"] == approx((1 + 1 / 2 + 1 / 4 + 1 / 11) / 4)   # MRR is not truncated
    assert list(out) == ["HR@1", "HR@5", "HR@10", "NDCG@1", "NDCG@5", "NDCG@10", "MRR", "users"]


def test_metrics_from_no_ranks_are_zero():
    out = metrics_from_ranks(np.array([], np.int64), (5,))
    assert out == {"HR@5": 0.0, "NDCG@5": 0.0, "MRR": 0.0, "users": 0}


def test_evaluate_test_phase_exact():
    d = shop()
    out = evaluate(Fixed(SCORES), d, NEGATIVES, "test", ks=KS, batch=8, short_quantile=0.2, tail_fraction=0.8)
    # full ranks [2, 0]: rank 2 -> NDCG 1/log2(4) = 0.5, MRR 1/3; rank 0 -> 1, 1
    full = out["full"]
    assert full["users"] == 2
    assert full["HR@1"] == approx(0.5) and full["HR@3"] == approx(1.0) and full["HR@5"] == approx(1.0)
    assert full["NDCG@1"] == approx(0.5)
    assert full["NDCG@3"] == approx((0.5 + 1.0) / 2)
    assert full["MRR"] == approx((1 / 3 + 1) / 2)
    # sampled ranks [2, 0]: same numbers, stored under the number of negatives
    assert set(out) == {"full", "sampled2", "slices"}
    assert out["sampled2"] == full


def test_evaluate_valid_phase_exact():
    d = shop()
    out = evaluate(Fixed(SCORES), d, NEGATIVES, "valid", ks=KS, batch=8)
    # full ranks [1, 2]: NDCG@3 = (1/log2(3) + 1/log2(4)) / 2, MRR = (1/2 + 1/3) / 2
    full = out["full"]
    assert full["HR@1"] == approx(0.0) and full["HR@3"] == approx(1.0)
    assert full["NDCG@3"] == approx((1 / math.log2(3) + 0.5) / 2)
    assert full["MRR"] == approx((1 / 2 + 1 / 3) / 2)
    assert out["sampled2"]["MRR"] == approx((1 / 2 + 1 / 3) / 2)


def test_evaluate_scores_only_users_with_a_target():
    d = shop()
    m = Fixed(SCORES)
    evaluate(m, d, NEGATIVES, "test", ks=KS, batch=8)
    assert all(2 not in users for users, _ in m.calls)
    assert {phase for _, phase in m.calls} == {"test"}


def test_evaluate_slices_exact():
    d = shop()
    out = evaluate(Fixed(SCORES), d, NEGATIVES, "test", ks=KS, batch=8, short_quantile=0.2, tail_fraction=0.8)
    # test-phase history lengths of evaluated users: u0 3, u1 2; 20% quantile = 2.2 -> short = {u1} (rank 0)
    short = out["slices"]["short_history"]
    assert short["full"]["users"] == 1 and short["full"]["MRR"] == approx(1.0)
    # train popularity 1:2, 2:1, 5:1; head = ceil(0.2 * 6) = 2 items, and 5 ties with 2 at the bar (popularity
    # 1), so the head is {1, 2, 5} (no id tie-break); target 4 (u0, rank 2) is tail, target 5 (u1) is not
    tail = out["slices"]["tail_items"]
    assert tail["full"]["users"] == 1 and tail["full"]["MRR"] == approx(1 / 3)
    assert tail["sampled2"]["users"] == 1


# ----------------------------------------------------------------------------- slices

def slice_shop() -> EvalData:
    """Items 1..5; valid-phase histories of length 1, 2, 3, 4 and a user u4 with no target."""
    train = [[1], [1, 2], [1, 2, 3], [1, 2, 3, 4], []]
    indptr = np.concatenate([[0], np.cumsum([len(t) for t in train])]).astype(np.int64)
    indices = np.array([i for t in train for i in t], np.int32)
    return EvalData(5, 5, Csr(indptr, indices), valid=np.array([1, 5, 4, 1, 0], np.int32),
                    test=np.array([2, 2, 2, 2, 0], np.int32))


def test_slice_masks_hand_case():
    d = slice_shop()
    m = slice_masks(d, "valid", short_quantile=0.2, tail_fraction=0.8)
    # lengths [1, 2, 3, 4] of users with a target: 20% quantile = 1 + 0.6 * (2 - 1) = 1.6 -> only u0.
    # u4 (length 0) has no target and is in no slice.
    assert m["short_history"].tolist() == [True, False, False, False, False]
    # train popularity 1:4, 2:3, 3:2, 4:1, 5:0; head = ceil(0.2 * 5) = 1 item = {1};
    # valid targets 1, 5, 4, 1 -> tail for u1, u2
    assert m["tail_items"].tolist() == [False, True, True, False, False]


def test_slice_masks_test_phase_use_train_popularity():
    d = slice_shop()
    m = slice_masks(d, "test", short_quantile=0.5, tail_fraction=0.6)
    # test-phase lengths (train + valid): 2, 3, 4, 5; median 3.5 -> u0, u1
    assert m["short_history"].tolist() == [True, True, False, False, False]
    # head = ceil(0.4 * 5) = 2 items {1, 2} by train popularity; every test target is 2 -> no tail user
    assert m["tail_items"].tolist() == [False] * 5


def test_tail_head_size_is_not_rounded_up_by_float_error():
    # 10 items, tail_fraction 0.7: the head is exactly 3 items (1 - 0.7 = 0.30000000000000004 in floats).
    # train popularity: item i (1..10) bought 11 - i times, so the head is {1, 2, 3} and item 4 is tail.
    train = [[i for i in range(1, 11) for _ in range(11 - i)]]
    d = EvalData(2, 10, Csr(np.array([0, len(train[0]), len(train[0])], np.int64), np.array(train[0], np.int32)),
                 valid=np.array([4, 3], np.int32), test=np.array([0, 0], np.int32))
    m = slice_masks(d, "valid", short_quantile=0.2, tail_fraction=0.7)
    assert m["tail_items"].tolist() == [True, False]


# ----------------------------------------------------------------------------- negatives

def negatives_shop() -> EvalData:
    """30 items; user u touched items (train, valid, test) as below."""
    rows = [  # (user, item, position, split)
        (0, 1, 0, "train"), (0, 2, 1, "train"), (0, 3, 2, "valid"), (0, 4, 3, "test"),
        (1, 10, 0, "train"), (1, 11, 1, "valid"), (1, 12, 2, "test"),
        (2, 5, 0, "train"), (2, 5, 1, "train"), (2, 6, 2, "valid"), (2, 7, 3, "test"),
        (3, 30, 0, "train"), (3, 29, 1, "valid"), (3, 28, 2, "test"),
    ]
    u, i, p, s = zip(*rows, strict=True)
    seq = pa.table({"user_idx": pa.array(u, pa.int32()), "item_idx": pa.array(i, pa.int32()),
                    "position": pa.array(p, pa.int32()), "split": list(s)})
    return from_sequences(seq, n_users=4, n_items=30)


TOUCHED = [{1, 2, 3, 4}, {10, 11, 12}, {5, 6, 7}, {28, 29, 30}]


def test_draw_negatives_shape_and_validity():
    d = negatives_shop()
    neg = draw_negatives(d, 20, seed=2024)
    assert neg.shape == (4, 20)
    assert neg.dtype == np.int32
    for u in range(4):
        row = neg[u].tolist()
        assert len(set(row)) == 20, f"duplicates in row {u}: {row}"
        assert not set(row) & TOUCHED[u], f"row {u} holds touched items"
        assert all(1 <= x <= 30 for x in row)


def test_draw_negatives_is_deterministic_per_seed():
    d = negatives_shop()
    a, b = draw_negatives(d, 20, seed=7), draw_negatives(d, 20, seed=7)
    np.testing.assert_array_equal(a, b)
    c = draw_negatives(d, 20, seed=8)
    assert not np.array_equal(a, c)


def test_draw_negatives_takes_every_untouched_item_when_n_is_the_maximum():
    # 26 untouched items for u0 (30 - 4): the draw must be a permutation of exactly those
    d = negatives_shop()
    neg = draw_negatives(d, 26, seed=1)
    assert sorted(neg[0].tolist()) == sorted(set(range(1, 31)) - TOUCHED[0])
    for u in (1, 2, 3):  # 27 untouched items each: 26 distinct of them
        assert len(set(neg[u].tolist())) == 26
        assert set(neg[u].tolist()) <= set(range(1, 31)) - TOUCHED[u]


def test_draw_negatives_refuses_when_a_user_touched_too_much():
    d = negatives_shop()
    with pytest.raises(ValueError, match="cannot draw 27"):
        draw_negatives(d, 27, seed=1)


def test_cascade_reorders_the_base_top_k_only():
    from pipelines.evaluation.scorers import CascadeScorer

    base = Fixed({"test": np.array([[0, 6, 5, 4, 3, 2, 1]], np.float32)})        # base order: 1 2 3 4 5 6
    llm = Fixed({"test": np.array([[9, 1, 2, 3, 9, 9, 9]], np.float32)})         # prefers 3 > 2 > 1 among them
    s = CascadeScorer(base, llm, k=3).score(np.array([0]), "test")[0]
    assert list(np.argsort(-s[1:], kind="stable") + 1) == [3, 2, 1, 4, 5, 6]   # the rest keep the base order
    data = shop()
    cascade = CascadeScorer(Fixed(SCORES), Fixed({p: -v for p, v in SCORES.items()}), k=2)
    for k in (2, 3, 5):                                      # at and beyond rerank_k: exactly the base's hits
        assert evaluate(cascade, data, NEGATIVES, "test", ks=(k,))["full"][f"HR@{k}"] == \
            evaluate(Fixed(SCORES), data, NEGATIVES, "test", ks=(k,))["full"][f"HR@{k}"]


def test_cascade_mix_zero_is_the_base_model_and_the_mix_is_chosen_on_valid():
    from pipelines.evaluation.scorers import MIX_GRID, CascadeScorer, cascade

    data = shop()
    base, other = Fixed(SCORES), Fixed({p: -v for p, v in SCORES.items()})
    for phase in ("valid", "test"):
        ref = evaluate(base, data, NEGATIVES, phase, ks=KS)["full"]
        assert evaluate(CascadeScorer(base, other, k=6, mix=0.0), data, NEGATIVES, phase, ks=KS)["full"] == ref
    scorer, served = cascade(base, other, 6, -1.0, data, np.array([0, 1, 2]))
    assert served is None and set(scorer.notes["valid_NDCG@10_by_mix"]) == set(MIX_GRID)
    grid = scorer.notes["valid_NDCG@10_by_mix"]
    assert scorer.mix == max(grid, key=grid.get) and scorer.notes["chosen_on"] == "valid NDCG@10"
    assert cascade(base, other, 6, 0.5, data, np.array([0, 1]))[0].mix == 0.5      # a fixed mix is kept


def test_candidate_protocol_ranks_among_the_first_n_minus_1_stored_negatives():
    d = shop()
    wide = np.array([[1, 5, 6], [1, 3, 4], [2, 3, 4]], np.int32)
    # u0 test target 4 (score 5): cand2 = [4, 1]: 1 (9) beats it -> rank 1; cand3 adds 5 (6) -> 2; sampled3 adds 6
    # (5, a tie) -> 3.  u1 target 5 (4): 1 (1), 3 (2), 4 (3) never beat it -> 0 everywhere.
    out = evaluate(Fixed(SCORES), d, wide, "test", ks=(1, 2), candidates=(2, 3))
    assert out["cand2"]["MRR"] == approx((1 / 2 + 1) / 2) and out["cand3"]["MRR"] == approx((1 / 3 + 1) / 2)
    assert out["sampled3"]["MRR"] == approx((1 / 4 + 1) / 2)
    assert set(out["slices"]["short_history"]) == {"full", "sampled3", "cand2", "cand3"}
    with pytest.raises(ValueError, match="eval.candidates"):
        evaluate(Fixed(SCORES), d, wide, "test", candidates=(5,))


def test_random_baseline_of_20_candidates_is_the_papers_reference():
    from pipelines.evaluation.protocol import random_baseline

    r = random_baseline(20, 10)
    assert round(r["HR@10"], 4) == 0.5 and round(r["NDCG@10"], 4) == 0.2272


def test_a_constant_scorer_gets_the_tie_averse_candidate_rank():
    d = shop()
    flat = {p: np.ones_like(s) for p, s in SCORES.items()}
    out = evaluate(Fixed(flat), d, np.array([[1, 5, 6], [1, 3, 4], [2, 3, 4]], np.int32), "test", ks=(1,),
                   candidates=(3,))
    assert out["cand3"]["HR@1"] == 0.0 and out["cand3"]["MRR"] == approx(1 / 3)  # last of 3, never lucky


def _wals_factors(home, zone: str, ds: str, n_users: int, n_items: int, value: float) -> None:
    from jobs import warehouse

    f = 2
    for table, id_col, idx_col, n, start in (("user_factors", "user_id", "user_idx", n_users, 0),
                                             ("item_factors", "item_id", "item_idx", n_items + 1, 1)):
        rows = list(range(start, n))
        warehouse.write_arrow(pa.table({id_col: pa.array([f"x{i}" for i in rows], pa.string()),
                                        idx_col: pa.array(rows, pa.int32()),
                                        "factors": pa.array([[value] * f for _ in rows], pa.list_(pa.float32()))}),
                              home, table, ds, zone)


def test_wals_scorer_refuses_to_score_valid_with_the_train_plus_valid_fit(tmp_path):
    # with wals.refit_on_valid the warehouse factors saw the valid targets; if the train-only (scratch) fit is
    # missing, evaluate must stop and say how to get it, not score valid with the train + valid fit
    from pathlib import Path

    from pipelines.backends.wals import SCRATCH
    from pipelines.config import load_config
    from pipelines.context import StageContext
    from pipelines.evaluation.scorers import wals

    d, ds = shop(), "2026-01-01"
    _wals_factors(tmp_path, "warehouse", ds, d.n_users, d.n_items, 1.0)
    ctx = StageContext(load_config(None), ds, Path(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"user_factors.*scratch.*re-run the 'wals' stage"):
        wals(ctx, d)
    _wals_factors(tmp_path, SCRATCH, ds, d.n_users, d.n_items, 2.0)
    scorer, _ = wals(ctx, d)
    assert scorer.score(np.array([0]), "valid")[0, 1] == 8.0          # the train-only fit: 2 * 2 * 2
    assert scorer.score(np.array([0]), "test")[0, 1] == 2.0           # the train + valid fit: 1 * 1 * 2
    no_refit = StageContext(load_config(None, ["wals.refit_on_valid=false"]), ds, Path(tmp_path / "other"))
    _wals_factors(no_refit.home, "warehouse", ds, d.n_users, d.n_items, 1.0)
    scorer, _ = wals(no_refit, d)                                      # the warehouse fit is train-only: fine
    assert scorer.score(np.array([0]), "valid")[0, 1] == 2.0
