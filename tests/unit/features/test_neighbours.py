"""Top-k cosine neighbours against a brute-force answer, FAISS against exact, and the label-sharing rate."""
from __future__ import annotations

import numpy as np
import pytest

from features.neighbours import exact_topk, faiss_topk, share_rate


def unit_rows(n: int, d: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def brute(x: np.ndarray, k: int) -> np.ndarray:
    sim = x @ x.T
    np.fill_diagonal(sim, -np.inf)
    return np.argsort(-sim, axis=1, kind="stable")[:, :k]


@pytest.mark.parametrize("block", [1, 7, 4096])
def test_exact_matches_brute_force_for_any_block_size(block):
    x = unit_rows(50, 8)
    idx, score = exact_topk(x, 5, block=block)
    assert idx.shape == score.shape == (50, 5)
    np.testing.assert_array_equal(idx, brute(x, 5))
    assert not (idx == np.arange(50)[:, None]).any()  # self excluded
    assert (np.diff(score, axis=1) <= 1e-7).all()  # best first
    np.testing.assert_allclose(score, np.take_along_axis(x @ x.T, idx, 1), rtol=1e-5)


def test_the_block_is_bounded_by_the_memory_budget_and_the_answer_does_not_depend_on_it(monkeypatch):
    from features import neighbours

    assert neighbours.block_rows(12_101, 4096, 8) == 4096                 # Beauty: the configured block
    assert neighbours.block_rows(2_000_000, 4096, 8) * 8 * 2_000_000 <= neighbours.BLOCK_BUDGET   # 100x users
    x = unit_rows(50, 8)
    want = exact_topk(x, 5)
    monkeypatch.setattr(neighbours, "BLOCK_BUDGET", 8 * 50 * 3)           # 3 rows a block
    assert neighbours.block_rows(50, 4096, 8) == 3
    got = exact_topk(x, 5)
    np.testing.assert_array_equal(got[0], want[0])


def test_k_is_capped_by_the_number_of_other_rows():
    idx, _ = exact_topk(unit_rows(4, 3), 10)
    assert idx.shape == (4, 3)


def test_faiss_flat_agrees_with_exact():
    x = unit_rows(300, 16, seed=1)
    e_idx, e_score = exact_topk(x, 10)
    f_idx, f_score = faiss_topk(x, 10, "Flat")
    np.testing.assert_allclose(f_score, e_score, atol=1e-5)
    assert (f_idx == e_idx).mean() > 0.99
    assert not (f_idx == np.arange(300)[:, None]).any()


def test_faiss_hnsw_recall_is_high():
    x = unit_rows(2000, 16, seed=2)
    e_idx, _ = exact_topk(x, 10)
    f_idx, _ = faiss_topk(x, 10, "HNSW32")
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(e_idx, f_idx, strict=True)])
    assert recall > 0.9


def test_share_rate_counts_shared_labels():
    labels = [{"a"}, {"a"}, {"b"}, {"b"}, set()]
    neigh = np.array([[1], [0], [3], [0], [0]])
    hit, base = share_rate(neigh, labels, np.random.default_rng(0))
    assert hit == pytest.approx(3 / 4)  # row 4 has no labels and is left out; 3 -> 0 shares nothing
    # the random baseline, on shops where its answer does not depend on the draw: every pair of distinct rows
    # shares a label, or none does
    same = share_rate(neigh, [{"a"}] * 5, np.random.default_rng(0))
    distinct = share_rate(neigh, [{str(i)} for i in range(5)], np.random.default_rng(0))
    assert same == (1.0, 1.0) and distinct == (0.0, 0.0)
