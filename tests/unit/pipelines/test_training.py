"""pipelines.training helpers: padding, batching, the DeepSpeed config and the torch full-ranking fast path."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pipelines.evaluation.protocol import Csr, EvalData, target_ranks
from pipelines.evaluation.scorers import FactorScorer
from pipelines.training.distributed import deepspeed_config
from pipelines.training.ranking import full_ranks
from pipelines.training.sequential import TrainSet, left_padded


def _csr(rows: list[list[int]]) -> Csr:
    indptr = np.concatenate([[0], np.cumsum([len(r) for r in rows])]).astype(np.int64)
    return Csr(indptr, np.array([i for r in rows for i in r], np.int32))


def test_left_padded_keeps_the_newest_items_on_the_right():
    hist = _csr([[1, 2, 3, 4], [5], []])
    out = left_padded(hist, np.array([0, 1, 2]), 3)
    assert out.tolist() == [[2, 3, 4], [0, 0, 5], [0, 0, 0]]


def test_trainset_rows_targets_and_batches():
    hist = _csr([[1, 2, 3], [4], [5, 6], [1, 2, 3, 4, 5, 6, 7]])
    ts = TrainSet.from_history(hist, max_len=4)
    assert ts.users.tolist() == [0, 2, 3]                       # user 1 has no next-item target
    assert ts.n_targets.tolist() == [2, 1, 4]                   # capped at max_len
    assert ts.seqs[2].tolist() == [3, 4, 5, 6, 7]
    b1, b2 = ts.batches(2, seed=0), ts.batches(2, seed=0)
    assert [x.tolist() for x in b1] == [x.tolist() for x in b2]  # seeded
    assert sorted(np.concatenate(b1).tolist()) == [0, 1, 2]      # every row once


def test_trainset_random_batches_mix_lengths_and_length_batches_do_not():
    rng = np.random.default_rng(0)
    lengths = np.repeat([3, 40], 64)                               # 64 short and 64 long histories
    hist = _csr([list(rng.integers(1, 50, n)) for n in lengths])
    ts = TrainSet.from_history(hist, max_len=50)
    by_len = ts.batches(32, seed=1)
    shuffled = ts.batches(32, seed=1, by_length=False)
    assert sorted(np.concatenate(shuffled).tolist()) == list(range(128))  # every row once
    assert [x.tolist() for x in shuffled] == [x.tolist() for x in ts.batches(32, seed=1, by_length=False)]
    assert all(len(set(ts.n_targets[b].tolist())) == 1 for b in by_len)  # one length per batch
    assert all(len(set(ts.n_targets[b].tolist())) == 2 for b in shuffled)  # both lengths in every batch


def test_deepspeed_config_sets_batch_keys_and_drops_named_optimizers(tmp_path):
    p = tmp_path / "ds.json"
    p.write_text(json.dumps({"zero_optimization": {"stage": 2}, "optimizer": {"type": "Adam"}}))
    conf = deepspeed_config(str(p), 256, 2)
    assert conf["train_batch_size"] == 256 and conf["train_micro_batch_size_per_gpu"] == 128
    assert "optimizer" not in conf and conf["zero_optimization"]["stage"] == 2
    with pytest.raises(ValueError, match="not divisible"):
        deepspeed_config("", 255, 2)
    p.write_text(json.dumps({"zero_optimization": {"stage": 3}}))
    with pytest.raises(ValueError, match="stage 3"):
        deepspeed_config(str(p), 256, 1)
    with pytest.raises(FileNotFoundError, match=r"^train_sequential\.distributed\.deepspeed_config: .*infra/deepspeed"):
        deepspeed_config(str(tmp_path / "missing.json"), 256, 1)
    with pytest.raises(ValueError, match=r"^train_llmrec\.train\.batch_size=255 is not divisible"):
        deepspeed_config("", 255, 2, section="train_llmrec")  # errors name the keys of the section being trained


@pytest.mark.parametrize("phase", ["valid", "test"])
def test_full_ranks_matches_the_evaluation_protocol(phase):
    rng = np.random.default_rng(0)
    n_users, n_items = 300, 40
    rows = [rng.choice(np.arange(1, n_items + 1), size=rng.integers(1, 8), replace=False).tolist()
            for _ in range(n_users)]
    valid = rng.integers(0, n_items + 1, n_users).astype(np.int32)     # 0 = no target
    test = np.where(valid > 0, rng.integers(1, n_items + 1, n_users), 0).astype(np.int32)
    data = EvalData(n_users, n_items, _csr(rows), valid, test)
    u = rng.integers(-2, 3, (n_users, 4)).astype(np.float32)           # small integers: many ties
    v = rng.integers(-2, 3, (n_items + 1, 4)).astype(np.float32)
    targets = data.targets(phase)
    who = np.flatnonzero(targets > 0)
    ref, *_ = target_ranks(FactorScorer({phase: (u, v)}), data, phase, who, np.ones((n_users, 1), np.int32), 64)
    got = full_ranks(torch.from_numpy(u), torch.from_numpy(v), data.history(phase), targets, batch=37)
    np.testing.assert_array_equal(got, ref)


def test_a_scoring_batch_is_bounded_by_memory_and_the_ranks_do_not_depend_on_it(monkeypatch):
    from features import neighbours
    from pipelines.evaluation import protocol

    assert protocol.scoring_batch(12_101, 4096) == 4096                # Beauty: the configured batch
    assert protocol.scoring_batch(10**6, 4096) * 12 * (10**6 + 1) <= neighbours.BLOCK_BUDGET
    assert protocol.scoring_batch(10**9, 4096) == 1
    rng = np.random.default_rng(1)
    n_users, n_items = 200, 30
    rows = [rng.choice(np.arange(1, n_items + 1), size=3, replace=False).tolist() for _ in range(n_users)]
    data = EvalData(n_users, n_items, _csr(rows), rng.integers(1, n_items + 1, n_users).astype(np.int32),
                    rng.integers(1, n_items + 1, n_users).astype(np.int32))
    u, v = rng.normal(size=(n_users, 4)).astype(np.float32), rng.normal(size=(n_items + 1, 4)).astype(np.float32)
    who, neg = np.arange(n_users), np.ones((n_users, 1), np.int32)
    big = target_ranks(FactorScorer({"test": (u, v)}), data, "test", who, neg, 512)[0]
    ranked = full_ranks(torch.from_numpy(u), torch.from_numpy(v), data.history("test"), data.test)
    monkeypatch.setattr(neighbours, "BLOCK_BUDGET", 12 * (n_items + 1) * 7)   # 7 users a batch
    assert protocol.scoring_batch(n_items, 512) == 7
    np.testing.assert_array_equal(target_ranks(FactorScorer({"test": (u, v)}), data, "test", who, neg, 512)[0], big)
    np.testing.assert_array_equal(full_ranks(torch.from_numpy(u), torch.from_numpy(v), data.history("test"),
                                             data.test), ranked)


def test_length_weighted_batching_divides_by_the_mean_batch_not_its_own_targets():
    from models.configs import SASRecConfig
    from models.sasrec import SASRec
    from pipelines.training.loop import Step
    from pipelines.training.sequential import SequentialTask

    rng = np.random.default_rng(0)
    lengths = np.repeat([3, 40], 64)
    n_items = 49
    hist = _csr([list(rng.integers(1, n_items + 1, n)) for n in lengths])
    data = EvalData(128, n_items, hist, np.ones(128, np.int32), np.ones(128, np.int32))
    model = SASRec(SASRecConfig(hidden=8, n_layers=1, n_heads=1, dropout=0.0), n_items).eval()

    class Engine:
        module = model

        def __call__(self, *a):
            return model(*a)

    step = Step(0, 1, torch.device("cpu"), np.random.default_rng(0))
    plain = SequentialTask(data, 50, 32, batching="length")
    weighted = SequentialTask(data, 50, 32, batching="length_weighted")
    total = float(weighted.train.n_targets.sum())
    sums = []
    for rows in weighted.batches(seed=3):
        a, b = plain.loss(Engine(), rows, step), weighted.loss(Engine(), rows, step)
        assert a.weight == float(plain.train.n_targets[rows].sum())      # its own targets' mean
        assert b.weight == pytest.approx(total / 4)                       # the mean batch's: 4 batches
        assert (b.loss * b.weight).item() == pytest.approx((a.loss * a.weight).item(), rel=1e-5)  # same summed loss
        sums.append(b.weight)
    assert sum(sums) == pytest.approx(total)  # the epoch's mean loss stays the mean over targets


def test_soft_targets_anneal_to_plain_ce_and_key_the_checkpoint_only_when_on():
    from models.configs import SASRecConfig
    from models.sasrec import SASRec
    from pipelines.config import SoftTargetsConfig, load_config
    from pipelines.context import StageContext
    from pipelines.stages.train_sequential import checkpoint_settings
    from pipelines.training.loop import Step
    from pipelines.training.sequential import SequentialTask, reads_text

    rng = np.random.default_rng(0)
    n_items = 20
    hist = _csr([list(rng.integers(1, n_items + 1, 6)) for _ in range(16)])
    data = EvalData(16, n_items, hist, np.ones(16, np.int32), np.ones(16, np.int32))
    text = rng.normal(size=(n_items + 1, 5)).astype(np.float32)
    text[0] = 0
    model = SASRec(SASRecConfig(hidden=8, n_layers=1, n_heads=1, dropout=0.0), n_items).eval()

    class Engine:
        module = model

        def __call__(self, *a):
            return model(*a)

    soft = SoftTargetsConfig(weight=0.5, k=3, anneal_epochs=2)
    plain, task = SequentialTask(data, 10, 16), SequentialTask(data, 10, 16, soft=soft, item_text=text)
    rows = task.batches(seed=0)[0]

    def loss(t, epoch):
        return t.loss(Engine(), rows, Step(0, 1, torch.device("cpu"), np.random.default_rng(0), epoch)).loss.item()

    assert loss(task, 1) != pytest.approx(loss(plain, 1))                 # the full soft weight at epoch 1
    assert loss(task, 3) == pytest.approx(loss(plain, 3))                 # annealed to 0 after anneal_epochs
    assert [soft.weight_at(e) for e in (1, 2, 3)] == [0.5, 0.25, 0.0]
    cfg = load_config(None, ["train_sequential.soft_targets.weight=0.2"])
    assert reads_text("sasrec", cfg) and not reads_text("sasrec", load_config(None, []))
    on = checkpoint_settings(StageContext(cfg, "2026-01-01", Path("/tmp")), "sasrec", 1)
    off = checkpoint_settings(StageContext(load_config(None, []), "2026-01-01", Path("/tmp")), "sasrec", 1)
    assert on["soft_targets"]["weight"] == 0.2 and "soft_targets" not in off


def test_min_batches_shrinks_the_batch_of_a_small_dataset_only():
    from pipelines.config import load_config
    from pipelines.training.sequential import SequentialTask, epoch_batch_size

    assert epoch_batch_size(22_363, 512, 0) == 512                 # off
    assert epoch_batch_size(22_363, 512, 40) == 512                # Beauty: 44 batches of 512 already
    assert epoch_batch_size(943, 512, 40) == 32                    # MovieLens-100k: 943 // 40 = 23, floor 32
    assert epoch_batch_size(5_000, 512, 40) == 125
    assert epoch_batch_size(5_000, 512, 40, world=4) == 124        # a multiple of the world size
    assert epoch_batch_size(100, 16, 40) == 16                     # never above train.batch_size
    rng = np.random.default_rng(0)
    hist = _csr([list(rng.integers(1, 30, 5)) for _ in range(200)])
    data = EvalData(200, 30, hist, np.ones(200, np.int32), np.ones(200, np.int32))
    task = SequentialTask(data, 10, 512, min_batches=4)
    assert task.batch_size == 50 and len(task.batches(seed=0)) == 4
    assert task.per_batch == pytest.approx(task.train.n_targets.sum() / 4)  # the loss's divisor follows the batch
    with pytest.raises(Exception, match="min_batches"):
        load_config(None, ["train_sequential.min_batches=-1"])


def test_full_ranks_nan_target_is_the_worst_and_nan_items_never_beat_a_finite_target():
    # a diverged epoch (NaN scores) must rank its target last, never -1 (which made NDCG@10 infinite and let early
    # stopping keep the epoch); NaN items must not beat a finite target. Same rule as the evaluation protocol.
    from pipelines.evaluation.protocol import metrics_from_ranks

    n_items = 6
    hist = _csr([[1, 2], [1], [3]])                                    # candidates: u0 4, u1 5, u2 5 items
    targets = np.array([3, 2, 1], np.int32)
    u = np.array([[1.0], [1.0], [np.nan]], np.float32)                # u2's scores are all NaN
    v = np.array([[0.0], [1.0], [2.0], [np.nan], [0.5], [3.0], [np.nan]], np.float32)  # item 3 and 6 score NaN
    got = full_ranks(torch.from_numpy(u), torch.from_numpy(v), hist, targets)
    # u0: target 3 is NaN -> last of its 4 candidates (3, 4, 5, 6) -> rank 3
    # u1: target 2 (2.0): only item 5 (3.0) beats it; NaN items 3 and 6 do not -> rank 1
    # u2: every score NaN -> the target is last of its 5 candidates (1, 2, 4, 5, 6) -> rank 4
    assert got.tolist() == [3, 1, 4]
    data = EvalData(3, n_items, hist, targets, np.zeros(3, np.int32))
    ref, *_ = target_ranks(FactorScorer({"valid": (u, v)}), data, "valid", np.arange(3), np.ones((3, 1), np.int32), 2)
    np.testing.assert_array_equal(got, ref)
    assert np.isfinite(metrics_from_ranks(got, (10,))["NDCG@10"])


def test_a_pca_item_table_starts_from_the_text_and_a_held_out_items_text_moves_its_own_row_only():
    import torch

    from pipelines.config import load_config
    from pipelines.training.sequential import build_model, reads_text

    cfg = load_config(None, ["train_sequential.sasrec.items.source=pca", "train_sequential.sasrec.hidden=4",
                             "train_sequential.sasrec.n_heads=1"])
    assert reads_text("sasrec", cfg)
    n = 12
    sem = np.random.default_rng(0).normal(size=(n + 1, 5)).astype(np.float32)
    sem[0] = 0
    exclude = torch.zeros(n + 1, dtype=torch.bool)
    exclude[n] = True
    w = build_model("sasrec", n, cfg, {"item_sem": sem}, exclude).item_emb.weight.detach()
    assert w.shape == (n + 1, 4) and build_model("sasrec", n, cfg, {"item_sem": sem}, exclude).item_text is None
    moved = sem.copy()
    moved[n] += 50.0
    w2 = build_model("sasrec", n, cfg, {"item_sem": moved}, exclude).item_emb.weight.detach()
    assert torch.allclose(w2[1:n], w[1:n]) and not torch.allclose(w2[n], w[n])
    other = sem.copy()
    other[1:n] = other[1:n][::-1]                                       # the trained items' texts start their rows
    assert not torch.allclose(build_model("sasrec", n, cfg, {"item_sem": other}, exclude).item_emb.weight[1:n], w[1:n])


def test_a_text_item_backbone_is_built_from_the_config_and_a_held_out_items_text_shapes_nothing():
    """``sasrec.items.source=text`` reads the item text table (and only then), standardised on the trained items:
    the cold item's text moves its own row only, and its delta starts (and, untrained, stays) at zero."""
    import torch

    from pipelines.config import load_config
    from pipelines.training.sequential import build_model, reads_text

    cfg = load_config(None, ["train_sequential.sasrec.items.source=text", "train_sequential.sasrec.hidden=8",
                             "train_sequential.sasrec.n_heads=1"])
    assert reads_text("sasrec", cfg) and not reads_text("sasrec", load_config(None, []))
    n = 6
    sem = np.random.default_rng(0).normal(size=(n + 1, 5)).astype(np.float32)
    sem[0] = 0
    exclude = torch.zeros(n + 1, dtype=torch.bool)
    exclude[n] = True                                                   # the cold item
    tables = {"item_sem": sem}
    m = build_model("sasrec", n, cfg, tables, exclude)
    text = m.item_text.text
    assert torch.allclose(text[1:n].mean(0), torch.zeros(5), atol=1e-5)  # standardised on the trained items only
    moved = sem.copy()
    moved[n] += 50.0
    m2 = build_model("sasrec", n, cfg, {"item_sem": moved}, exclude)
    assert torch.allclose(m2.item_text.text[:n], text[:n]) and not torch.allclose(m2.item_text.text[n], text[n])
    assert float(m.item_emb.weight.detach().abs().sum()) == 0.0
