"""Known traps of sequential-recommendation evaluation, each shown not to reach recpipe (issue 19, item 6).

* Ties broken by item id (LRURec issue 1: about +20% NDCG): a model that returns constant scores must earn the
  tie-averse value (nothing), not what an id-ordered sort would hand it.
* Metrics that depend on how ids were assigned (P5's sequential ids let a model guess the test item from the
  number after the last one): relabelling items and users must leave every figure, slices included, unchanged,
  and the sequence model must see an item index only as a row of its embedding table.
* The target inside the model's input (IDGenRec's user ids contained it): changing every test target must leave
  everything a model is trained on or scored from unchanged.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch

from features.interactions import count_matrix
from models.configs import SASRecConfig
from models.sasrec import SASRec
from pipelines.evaluation.protocol import draw_negatives, evaluate, from_sequences
from pipelines.evaluation.scorers import FactorScorer
from pipelines.training.sequential import TrainSet, user_vectors

N_USERS, N_ITEMS = 80, 50


def sequences(seed: int, n_users: int = N_USERS, n_items: int = N_ITEMS) -> pa.Table:
    """Random histories of 3 to 9 distinct items; the last is test, the one before valid, the rest train."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        items = rng.choice(np.arange(1, n_items + 1), size=int(rng.integers(3, 10)), replace=False)
        n = len(items)
        for p, i in enumerate(items):
            rows.append((u, int(i), p, "test" if p == n - 1 else "valid" if p == n - 2 else "train"))
    u, i, p, s = zip(*rows, strict=True)
    return pa.table({"user_idx": pa.array(u, pa.int32()), "item_idx": pa.array(i, pa.int32()),
                     "position": pa.array(p, pa.int32()), "split": list(s)})


def relabel(seq: pa.Table, user_map: np.ndarray, item_map: np.ndarray) -> pa.Table:
    return seq.set_column(0, "user_idx", pa.array(user_map[seq.column("user_idx").to_numpy()], pa.int32())) \
              .set_column(1, "item_idx", pa.array(item_map[seq.column("item_idx").to_numpy()], pa.int32()))


def tied_factors(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """User and item vectors whose products take few distinct values: many ties, including with the target."""
    rng = np.random.default_rng(seed)
    users = rng.integers(0, 3, size=(N_USERS, 2)).astype(np.float32)
    items = rng.integers(0, 3, size=(N_ITEMS + 1, 2)).astype(np.float32)
    return users, items


def flatten(out: dict, prefix: str = "") -> dict[str, float]:
    flat = {}
    for k, v in out.items():
        flat.update(flatten(v, f"{prefix}{k}/") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return flat


@pytest.mark.parametrize("phase", ["valid", "test"])
def test_relabelling_items_and_users_leaves_every_metric_unchanged(phase):
    seq = sequences(0)
    data = from_sequences(seq, N_USERS, N_ITEMS)
    neg = draw_negatives(data, 20, seed=1)
    uv, iv = tied_factors(2)
    rng = np.random.default_rng(3)
    user_map = rng.permutation(N_USERS)
    item_map = np.concatenate([[0], rng.permutation(N_ITEMS) + 1])       # padding stays 0
    data2 = from_sequences(relabel(seq, user_map, item_map), N_USERS, N_ITEMS)
    neg2 = np.empty_like(neg)
    neg2[user_map] = item_map[neg]                                        # the same stored negatives, relabelled
    uv2, iv2 = np.empty_like(uv), np.empty_like(iv)
    uv2[user_map], iv2[item_map] = uv, iv                                 # the same model, relabelled
    a = evaluate(FactorScorer({phase: (uv, iv)}), data, neg, phase, ks=(5, 10), candidates=(10,))
    b = evaluate(FactorScorer({phase: (uv2, iv2)}), data2, neg2, phase, ks=(5, 10), candidates=(10,))
    fa, fb = flatten(a), flatten(b)
    assert fa.keys() == fb.keys()
    assert {k: pytest.approx(v, abs=1e-12) for k, v in fa.items()} == fb
    assert a["slices"]["tail_items"]["full"]["users"] > 0                 # the slices were exercised


def test_a_constant_scorer_earns_the_tie_averse_value_not_an_id_ordered_one():
    data = from_sequences(sequences(4), N_USERS, N_ITEMS)
    neg = draw_negatives(data, 20, seed=5)
    const = FactorScorer({"test": (np.ones((N_USERS, 1), np.float32), np.ones((N_ITEMS + 1, 1), np.float32))})
    out = evaluate(const, data, neg, "test", ks=(10,), candidates=(10,))
    for proto in ("full", "sampled20"):
        assert out[proto]["NDCG@10"] == 0.0 and out[proto]["HR@10"] == 0.0, proto
    # among 10 candidates every target is in the top 10, but last: rank 9 for every user
    assert out["cand10"]["MRR"] == pytest.approx(1 / 10) and out["cand10"]["NDCG@10"] == pytest.approx(1 / np.log2(11))
    # what a sort that breaks ties by item id (lower id first) would have reported for the same scores: a lucky
    # figure, well above zero; the protocol must not be that
    hist, tgt = data.history("test"), data.test
    lucky = []
    for u in np.flatnonzero(tgt > 0):
        seen = set(hist.indices[hist.indptr[u]:hist.indptr[u + 1]].tolist()) - {int(tgt[u])}
        cands = [i for i in range(1, N_ITEMS + 1) if i not in seen]
        r = cands.index(int(tgt[u]))
        lucky.append(1 / np.log2(r + 2) if r < 10 else 0.0)
    assert np.mean(lucky) > 0.05


def test_a_target_tied_with_m_candidates_ranks_below_all_of_them():
    data = from_sequences(sequences(6), N_USERS, N_ITEMS)
    neg = draw_negatives(data, 20, seed=7)
    u = int(np.flatnonzero(data.test > 0)[0])
    items = np.zeros((N_ITEMS + 1, 1), np.float32)
    hist = set(data.history("test").indices[data.history("test").indptr[u]:data.history("test").indptr[u + 1]])
    others = [i for i in range(1, N_ITEMS + 1) if i not in hist and i != data.test[u]][:3]
    items[[int(data.test[u]), *others]] = 1.0                             # the target ties with exactly 3 items
    out = evaluate(FactorScorer({"test": (np.ones((N_USERS, 1), np.float32), items)}), data, neg, "test",
                   ks=(1, 5), users=np.array([u]))
    assert out["full"]["MRR"] == pytest.approx(1 / 4) and out["full"]["HR@1"] == 0.0


def test_changing_every_test_target_changes_nothing_a_model_learns_or_is_scored_from():
    seq = sequences(8)
    test = np.array(seq.column("split").to_pylist()) == "test"
    items = seq.column("item_idx").to_numpy().copy()
    items[test] = N_ITEMS + 1 - items[test]                               # other test targets, same users
    seq2 = seq.set_column(1, "item_idx", pa.array(items, pa.int32()))
    a, b = from_sequences(seq, N_USERS, N_ITEMS), from_sequences(seq2, N_USERS, N_ITEMS)
    assert (a.test != b.test).any()
    # sequence models: training rows, and the test-phase history they encode a user from
    np.testing.assert_array_equal(TrainSet.from_history(a.train, 8).seqs, TrainSet.from_history(b.train, 8).seqs)
    for phase in ("valid", "test"):
        ha, hb = a.history(phase), b.history(phase)
        np.testing.assert_array_equal(ha.indptr, hb.indptr)
        np.testing.assert_array_equal(ha.indices, hb.indices)
    torch.manual_seed(0)
    model = SASRec(SASRecConfig(max_len=8, hidden=16, n_layers=1, n_heads=1, dropout=0.0), N_ITEMS)
    ua, _ = user_vectors(model, a.history("test"), N_USERS, 8, 32)
    ub, _ = user_vectors(model, b.history("test"), N_USERS, 8, 32)
    np.testing.assert_array_equal(ua, ub)
    # WALS: the matrices it is fitted on (train; train + valid when refit on valid)
    for splits in (("train",), ("train", "valid")):
        assert (count_matrix(seq, N_USERS, N_ITEMS, splits) != count_matrix(seq2, N_USERS, N_ITEMS, splits)).nnz == 0


def test_the_sequence_model_sees_an_item_index_only_as_a_row_of_its_tables():
    """Relabel the items and permute the model's item rows the same way: every user vector and every score is
    the same, so nothing is learned from the index values themselves (what P5's sequential ids leaked)."""
    seq = sequences(9)
    rng = np.random.default_rng(10)
    item_map = np.concatenate([[0], rng.permutation(N_ITEMS) + 1])
    a = from_sequences(seq, N_USERS, N_ITEMS)
    b = from_sequences(relabel(seq, np.arange(N_USERS), item_map), N_USERS, N_ITEMS)
    torch.manual_seed(0)
    cfg = SASRecConfig(max_len=8, hidden=16, n_layers=2, n_heads=2, dropout=0.0)
    m1 = SASRec(cfg, N_ITEMS)
    m2 = SASRec(cfg, N_ITEMS)
    m2.load_state_dict(m1.state_dict())
    with torch.no_grad():
        m2.item_emb.weight[torch.from_numpy(item_map)] = m1.item_emb.weight.clone()
    u1, i1 = user_vectors(m1, a.history("test"), N_USERS, 8, 32)
    u2, i2 = user_vectors(m2, b.history("test"), N_USERS, 8, 32)
    np.testing.assert_allclose(u1, u2, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose((u1 @ i1.T)[:, 1:], (u2 @ i2.T)[:, item_map[1:]], rtol=1e-5, atol=1e-5)
