"""The cold-item baselines (``pipelines.evaluation.cold_start`` and ``scorers``, math in ``features.cold_start``) on
hand-made arrays: content kNN's cosine, choices made on the cold-valid users only, kNN fill-in, the ridge map and its
norm calibration, and the model zoo, unchanged without cold items."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from features import schemas
from features.cold_start import (
    fill_in,
    norm_matched,
    recency_ages,
    recency_profiles,
    ridge_fit,
    ridge_predict,
    text_gate,
    top_similar,
    unit_rows,
)
from jobs import warehouse
from pipelines.evaluation import cold_start as cs
from pipelines.evaluation.protocol import COLD_TEST, COLD_VALID, Csr, EvalData, draw_negatives, evaluate
from pipelines.evaluation.scorers import FactorScorer, day_one, filled, gated, regressed

WARM_TOLERANCE = 0.01

DS = "2026-01-01"


def _data(train: list[list[int]], valid: list[int], test: list[int], cold: dict[int, int], n_items: int) -> EvalData:
    indptr = np.concatenate([[0], np.cumsum([len(t) for t in train])]).astype(np.int64)
    flags = np.zeros(n_items + 1, np.int8)
    flags[list(cold)] = list(cold.values())
    return EvalData(len(train), n_items, Csr(indptr, np.array([i for t in train for i in t], np.int32)),
                    np.array(valid, np.int32), np.array(test, np.int32), flags)


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


# ----------------------------------------------------------------------------- content kNN

def test_recency_ages_count_back_from_the_last_item():
    assert recency_ages(np.array([2, 0, 3])).tolist() == [1, 0, 2, 1, 0]
    text = np.arange(12, dtype=np.float32).reshape(4, 3)
    prof = recency_profiles(text, np.array([0, 0, 2]), np.array([1, 2, 3]), np.array([1, 0, 0]), 3, 0.5)
    assert prof[0] == pytest.approx((0.5 * text[1] + text[2]) / 1.5) and (prof[1] == 0).all()
    assert prof[2] == pytest.approx(text[3])


def test_content_knn_scores_the_hand_computed_cosine():
    text = np.array([[0, 0, 0], [1, 0, 0], [0, 2, 0], [1, 1, 1], [0, 1, 3], [2, -1, 1]], np.float32)
    d = _data([[1, 2, 3]], [4], [5], {5: COLD_TEST}, 5)
    m = cs.ContentKnn(d, text, 0.5)
    p_valid = (0.25 * text[1] + 0.5 * text[2] + 1.0 * text[3]) / 1.75     # ages 2, 1, 0
    p_test = (0.125 * text[1] + 0.25 * text[2] + 0.5 * text[3] + text[4]) / 1.875   # the valid item is age 0
    for phase, p in (("valid", p_valid), ("test", p_test)):
        s = m.score(np.array([0]), phase)
        assert s.shape == (1, 6) and s[0, 0] == 0                          # padding: a zero vector
        assert s[0, 1:] == pytest.approx([_cos(p, text[i]) for i in range(1, 6)], abs=1e-6)
    last = cs.content_knn_last(d, text)[0].score(np.array([0]), "test")
    assert last[0, 1:] == pytest.approx([_cos(text[4], text[i]) for i in range(1, 6)], abs=1e-6)


def test_the_decay_is_chosen_on_the_cold_valid_users_not_on_test():
    # u0 (cold-valid): history 1 then 2, target 3, which is near the OLDER item: the plain mean (decay 1) ranks it
    # first. u1 (cold-test): history 1 then 2, target 4, near the newest item: a fast decay ranks it first.
    text = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [1, 0.5, 0], [0.3, 1, 0], [0, 0, 1]], np.float32)
    d = _data([[1, 2], [1]], [3, 2], [0, 4], {3: COLD_VALID, 4: COLD_TEST}, 5)
    m, arrays = cs.content_knn(d, text)
    assert arrays is None and m.decay == 1.0 and m.notes["decay"] == 1.0 and m.notes["cold_valid_users"] == 1
    second = pytest.approx(1 / np.log2(3))                                 # the target ranked second
    assert m.notes["cold_valid_NDCG@10_by_decay"] == {0.3: second, 0.5: second, 0.7: second, 1.0: 1.0}
    neg = draw_negatives(d, 1, 0)
    on_test = {dec: evaluate(cs.ContentKnn(d, text, dec), d, neg, "test", ks=(10,))["cold"]["full"]["NDCG@10"]
               for dec in cs.DECAY_GRID}
    assert on_test[0.3] == 1.0 > on_test[1.0]                              # test would have chosen otherwise


# ----------------------------------------------------------------------------- fill-in

def test_top_similar_and_fill_in_give_a_cold_item_its_neighbours_mean():
    text = np.array([[0, 0], [1, 0], [0.9, 0.1], [0, 1], [0.1, 0.9], [1, 1], [1, 0.05]], np.float32)
    vec = np.arange(14, dtype=np.float32).reshape(7, 2) * 10
    assert top_similar(text[[6]], text[[1, 2, 3]], 2).tolist() == [[0, 1]]
    assert top_similar(np.ones((1, 2)), np.array([[1, 0], [0, 1]]), 2).tolist() == [[0, 1]]   # tie: lower index
    out, nb = fill_in(vec, text, cold=np.array([4, 6]), donors=np.array([1, 2, 3, 5]), k=2)
    assert nb.tolist() == [[3, 5], [1, 2]]
    assert out[4] == pytest.approx((vec[3] + vec[5]) / 2) and out[6] == pytest.approx((vec[1] + vec[2]) / 2)
    keep = [0, 1, 2, 3, 5]
    assert (out[keep] == vec[keep]).all() and (vec[4] == [80, 90]).all()   # the input is not modified


def test_filled_scorer_changes_only_the_cold_rows_from_trained_warm_items():
    # items 1..3 trained (in a train history), 4 warm but untrained (only a test target), 5 cold-valid, 6 cold-test
    d = _data([[1, 2], [3]], [3, 5], [4, 0], {5: COLD_VALID, 6: COLD_TEST}, 6)
    text = np.array([[0, 0], [1, 0], [0, 1], [1, 1], [1, 0.12], [1, 0.1], [0.1, 1]], np.float32)
    items = np.random.default_rng(0).normal(size=(7, 3)).astype(np.float32)
    users = np.random.default_rng(1).normal(size=(2, 3)).astype(np.float32)
    base = FactorScorer({"valid": (users, items), "test": (users * 2, items)})
    m, arrays = filled(base, text, d, {"valid": "valid", "test": "valid"}, k=2)
    assert arrays is None and m.notes["donors_by_phase"] == {"valid": 3, "test": 3}
    for phase, (u, v) in m.by_phase.items():
        assert u is base.by_phase[phase][0]                                # user vectors unchanged
        assert (v[:5] == items[:5]).all()                                  # warm rows (untrained 4 too) unchanged
        assert v[5] == pytest.approx((items[1] + items[3]) / 2)            # 4 (nearer) is untrained: 1 and 3
        assert v[6] == pytest.approx((items[2] + items[3]) / 2)            # never the untrained 4
    assert m.score(np.array([1]), "test") == pytest.approx(users[[1]] * 2 @ m.by_phase["test"][1].T)


# ----------------------------------------------------------------------------- regressor

def test_ridge_reproduces_a_linear_map_exactly_on_noiseless_data():
    rng = np.random.default_rng(0)
    a, c = rng.normal(size=(4, 3)), rng.normal(size=3)
    x = rng.normal(size=(40, 4))
    w, b = ridge_fit(x, x @ a + c, 0.0)
    assert w == pytest.approx(a, abs=1e-9) and b == pytest.approx(c, abs=1e-9)
    new = rng.normal(size=(5, 4))
    assert ridge_predict(new, w, b) == pytest.approx(new @ a + c, abs=1e-5)
    w, _ = ridge_fit(x, x @ a + c, 1e-6)
    assert w == pytest.approx(a, abs=1e-5)
    shrunk, _ = ridge_fit(x, x @ a + c, 100.0)
    assert np.linalg.norm(shrunk) < np.linalg.norm(a)                      # the penalty shrinks
    assert np.linalg.norm(norm_matched(new, x, 2.0), axis=1).mean() == pytest.approx(
        2 * np.linalg.norm(x, axis=1).mean())


def test_the_norm_scale_is_the_one_that_maximises_cold_valid_ndcg():
    # text = trained vector on the warm items (an exact identity map); cold 4 -> (1, 1), cold 5 -> (-1, 2), both
    # rescaled by f = scale * (mean trained norm 1.7) / (mean predicted norm 1.825). User A = (1, 0), history 3:
    # ranks 4 first iff f > 0.8 (item 1); user B = (0, -1), history 1: ranks 4 first iff f < 1.3 (item 2). Only
    # scale 1.0 (f = 0.93) satisfies both; 0.75 (f = 0.70) fails A, 1.5 (f = 1.40) fails B.
    items = np.array([[0, 0], [0.8, 0], [0, 1.3], [0, 3], [9, 9], [9, 9]], np.float32)   # cold rows: noise
    text = items.copy()
    text[4], text[5] = (1, 1), (-1, 2)
    users = np.array([[1, 0], [0, -1], [1, 1]], np.float32)
    d = _data([[3], [1], [2]], [4, 4, 1], [0, 0, 3], {4: COLD_VALID, 5: COLD_TEST}, 5)
    base = FactorScorer({"valid": (users, items), "test": (users, items)})
    m, _ = regressed(base, text, d, lambdas=(0.0,))
    n = m.notes
    assert n["norm_scale"] == 1.0 and n["ridge_lambda"] == 0.0 and n["cold_valid_users"] == 2 and n["donors"] == 3
    grid = n["cold_valid_NDCG@10_by_lambda_scale"]["0.0"]
    one_second = pytest.approx((1 + 1 / np.log2(3)) / 2)                   # one user first, the other second
    assert grid["1.0"] == 1.0 and max(v for s, v in grid.items() if s != "1.0") == one_second
    f = 1.7 / ((np.sqrt(2) + np.sqrt(5)) / 2)
    v = m.by_phase["test"][1]
    assert v[4] == pytest.approx([f, f], abs=1e-5) and v[5] == pytest.approx([-f, 2 * f], abs=1e-5)
    assert (v[:4] == items[:4]).all() and (m.by_phase["valid"][0] == users).all()


# ----------------------------------------------------------------------------- the day-one path

def _day_one_case(one_table: bool):
    items = np.array([[0, 0], [0.8, 0], [0, 1.3], [0, 3], [-9, 9], [-9, 9]], np.float32)   # cold rows: noise
    text = items.copy()
    text[4], text[5] = (1, 1), (-1, 2)
    users = np.array([[1, 0], [0, -1], [1, 1]], np.float32)
    d = _data([[3], [1], [2]], [4, 4, 1], [0, 0, 3], {4: COLD_VALID, 5: COLD_TEST}, 5)
    base = FactorScorer({"valid": (users, items), "test": (users, items if one_table else items * 2)})
    arrays = {"user_emb": users, "item_emb": items if one_table else items * 2, "item_bias": np.zeros(6, np.float32)}
    return base, arrays, text, d, items


def test_day_one_serves_the_path_best_on_cold_valid_and_names_it():
    base, arrays, text, d, items = _day_one_case(True)
    m, served = day_one((base, arrays), text, d, {"valid": "valid", "test": "valid"}, 1024, WARM_TOLERANCE)
    cold, warm = m.notes["cold_valid_NDCG@10_by_path"], m.notes["warm_valid_NDCG@10_by_path"]
    assert set(cold) == set(warm) == {"own", "fill_in", "regressor"} and m.notes["cold_valid_users"] == 2
    # fill-in beats own on the cold-valid users (A, B) but costs the warm one (C) its first place: not eligible
    assert cold["own"] < cold["fill_in"] < cold["regressor"] and warm["fill_in"] < warm["own"] == warm["regressor"]
    assert m.notes["day_one"] == served["day_one"] == "regressor"
    table = served["item_emb"]
    assert table is m.by_phase["test"][1] and served["day_one_rows"].tolist() == [4, 5]
    assert (table[:4] == arrays["item_emb"][:4]).all() and not (table[4:] == arrays["item_emb"][4:]).any()
    assert served["user_emb"] is arrays["user_emb"] and (items[4] == [-9, 9]).all()    # nothing modified in place


def test_day_one_never_buys_cold_figures_with_the_warm_users():
    # WALS-like, two item tables: no regressor; fill-in alone is better on cold-valid and worse on warm-valid
    base, arrays, text, d, _ = _day_one_case(False)
    m, served = day_one((base, arrays), text, d, {"valid": "valid", "test": "valid"}, 1024, WARM_TOLERANCE)
    cold, warm = m.notes["cold_valid_NDCG@10_by_path"], m.notes["warm_valid_NDCG@10_by_path"]
    assert set(cold) == {"own", "fill_in"} and cold["fill_in"] > cold["own"]
    assert warm["fill_in"] < (1 - WARM_TOLERANCE) * warm["own"]
    assert m.notes["day_one"] == served["day_one"] == "own" and served["item_emb"] is arrays["item_emb"]


def test_day_one_keeps_the_model_as_trained_when_that_is_best():
    base, arrays, text, d, _ = _day_one_case(True)
    good = base.by_phase["valid"][1].copy()
    good[4] = (9, -0.5)                                                    # first for both cold-valid users
    base = FactorScorer({ph: (u, good) for ph, (u, _) in base.by_phase.items()})
    m, served = day_one((base, {**arrays, "item_emb": good}), text, d, {"valid": "valid", "test": "valid"}, 1024, WARM_TOLERANCE)
    assert m.notes["day_one"] == served["day_one"] == "own" and "day_one_rows" not in served
    assert served["item_emb"] is good


def test_text_gate_is_one_dot_product_of_the_standardised_scores():
    rng = np.random.default_rng(3)
    items, users = rng.normal(size=(9, 4)), rng.normal(size=(5, 4))
    text, prof = rng.normal(size=(9, 6)), rng.normal(size=(5, 6))
    prof[4] = 0                                                            # a user without history
    cold = np.zeros(9, bool)
    cold[[6, 7, 8]] = True
    u, v = text_gate(users, items, prof, text, cold, gamma=4.0, threshold=2.0)
    got = u @ v.T                                                          # (5, 9)
    own = users @ items[1:6].T                                             # warm items 1..5 (0 is padding)
    want_warm = (own - own.mean(1, keepdims=True)) / own.std(1, keepdims=True)
    cos = unit_rows(prof) @ unit_rows(text)[1:].T                          # every real item
    z = np.divide(cos - cos.mean(1, keepdims=True), cos.std(1, keepdims=True), out=np.zeros_like(cos),
                  where=cos.std(1, keepdims=True) > 0)
    assert np.allclose(got[:, 1:6], want_warm, atol=1e-5) and (v[0] == 0).all()
    assert np.allclose(got[:, 6:], 4.0 * (z[:, 5:] - 2.0), atol=1e-4)      # no profile: every cold item at -8


def test_gated_keeps_the_warm_users_and_records_the_trade_off():
    base, _, text, d, _ = _day_one_case(True)
    m, served = gated(base, text, d, WARM_TOLERANCE, 1024)
    n = m.notes
    grid = {float(t): g for t, g in n["valid_NDCG@10_by_threshold"].items()}
    assert served is None and list(grid) == list(cs.GATE_THRESHOLDS[:len(grid)])    # scanned from the top down
    kept = [t for t, g in grid.items() if g["warm"] >= (1 - WARM_TOLERANCE) * n["warm_valid_NDCG@10_own"]]
    assert kept == list(grid)[:len(kept)] and len(grid) - len(kept) <= 1            # stops at the first loss
    assert n["threshold"] == (max(kept, key=lambda t: grid[t]["cold"]) if kept else None)


# ----------------------------------------------------------------------------- the zoo

def _home(tmp_path, cold: bool, text: bool = True):
    from pipelines.config import load_config
    from pipelines.context import StageContext

    ctx = StageContext(load_config(None, []), DS, tmp_path)
    warehouse.write_arrow(pa.table({"user_id": ["u"], "user_idx": pa.array([0], pa.int32()),
                                    "factors": pa.array([[1.0]], pa.list_(pa.float32()))}, schema=schemas.USER_FACTORS),
                          tmp_path, "user_factors", DS)
    (ctx.model_dir("train_sequential", "sasrec")).mkdir(parents=True)
    (ctx.model_dir("train_sequential", "sasrec") / "vectors.npz").write_bytes(b"")
    if text:
        vec = [[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]]
        warehouse.write_arrow(pa.table({"kind": ["item", "item", "user"], "source": ["metadata"] * 3,
                                        "id": ["a", "b", "u"], "idx": pa.array([1, 2, 0], pa.int32()),
                                        "fallback": [False] * 3, "text_hash": ["h"] * 3,
                                        "vector": pa.array(vec, pa.list_(pa.float32()))},
                                       schema=schemas.TEXT_EMBEDDINGS), tmp_path, "text_embeddings", DS)
    if cold:
        warehouse.write_arrow(pa.table({"item_idx": pa.array([2], pa.int32()), "item_id": ["b"], "half": ["test"]},
                                       schema=schemas.COLD_ITEMS), tmp_path, "cold_items", DS)
    return ctx


def test_without_cold_items_the_zoo_is_unchanged(tmp_path):
    from pipelines.evaluation.scorers import model_zoo

    skipped: dict = {}
    assert list(model_zoo(_home(tmp_path, cold=False), skipped)) == ["popularity", "wals", "sasrec"] and skipped == {}


def test_with_cold_items_the_baselines_join_the_zoo_or_say_why_not(tmp_path):
    from pipelines.evaluation.scorers import model_zoo

    ctx = _home(tmp_path / "a", cold=True)
    skipped: dict = {}
    zoo = model_zoo(ctx, skipped)
    assert list(zoo) == ["popularity", "wals", "sasrec", "content_knn", "content_knn_last", "sasrec_fill_in",
                         "sasrec_regressor", "sasrec_text_gate", "wals_fill_in", "wals_as_trained",
                         "sasrec_as_trained"] and skipped == {}
    d = _data([[1]], [0], [2], {2: COLD_TEST}, 2)
    s = zoo["content_knn_last"](d)[0].score(np.array([0]), "test")        # text read from text_embeddings
    assert s[0, 1:] == pytest.approx([1.0, 0.0])
    skipped = {}
    assert list(model_zoo(_home(tmp_path / "b", cold=True, text=False), skipped)) == ["popularity", "wals", "sasrec"]
    assert set(skipped) == set(cs.MODELS) and "run the embed stage" in skipped["content_knn"]
