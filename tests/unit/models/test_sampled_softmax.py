"""The sampled softmax with the logQ correction (``models.sasrec.sampled_ce_loss``) and its negative sampler
(``pipelines.training.ranking.NegativeSampler``): issue 42's loss for catalogues too large for full CE."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from models.sasrec import ce_loss, sampled_ce_loss
from pipelines.training.ranking import NegativeSampler

N, H = 30, 6


def _case(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(3, 4, H, generator=g)
    items = torch.randn(N + 1, H, generator=g)
    targets = torch.randint(1, N + 1, (3, 4), generator=g)
    targets[0, :2] = 0                                                    # no target there
    return hidden, items, targets


def test_with_every_item_once_and_a_uniform_q_it_is_full_ce():
    hidden, items, targets = _case()
    every = torch.arange(1, N + 1)                                        # the target among them: masked as a hit
    log_q = torch.zeros(N + 1)                                            # n q = N * 1/N = 1
    assert torch.allclose(sampled_ce_loss(hidden, targets, items, every, log_q), ce_loss(hidden, targets, items),
                          atol=1e-5)


def test_the_logq_correction_brings_the_expected_gradient_to_full_ces():
    hidden, items, targets = _case(1)
    counts = np.r_[0, np.arange(N, 0, -1) ** 2].astype(np.int64)           # a steep popularity
    sampler = NegativeSampler(counts, 64)
    rng = np.random.default_rng(0)

    def grad(loss_fn) -> torch.Tensor:
        h = hidden.clone().requires_grad_(True)
        loss_fn(h).backward()
        return h.grad.flatten()

    full = grad(lambda h: ce_loss(h, targets, items))
    corrected, plain = torch.zeros_like(full), torch.zeros_like(full)
    for _ in range(400):
        neg = torch.from_numpy(sampler.draw(rng))
        corrected += grad(lambda h, neg=neg: sampled_ce_loss(h, targets, items, neg, sampler.log_q)) / 400
        plain += grad(lambda h, neg=neg: sampled_ce_loss(h, targets, items, neg, torch.zeros(N + 1))) / 400
    cos = torch.nn.functional.cosine_similarity
    assert cos(corrected, full, dim=0) > 0.99
    assert (corrected - full).norm() < 0.8 * (plain - full).norm()        # without it the popular items are over-pushed


def test_the_sampler_follows_its_distribution_and_never_draws_padding_or_held_out_items():
    counts = np.r_[0, np.arange(1, N + 1)].astype(np.int64)
    exclude = torch.zeros(N + 1, dtype=torch.bool)
    exclude[[3, 7]] = True
    s = NegativeSampler(counts, 50_000, exclude)
    drawn = s.draw(np.random.default_rng(0))
    assert drawn.shape == (50_000,) and not np.isin(drawn, [0, 3, 7]).any()
    q = (counts + 1.0) ** 0.75
    q[[0, 3, 7]] = 0
    q /= q.sum()
    assert np.bincount(drawn, minlength=N + 1) / 50_000 == pytest.approx(q, abs=0.01)
    assert torch.allclose(s.log_q[1:3], torch.log(torch.tensor(50_000 * q[1:3], dtype=torch.float32)))


def test_the_sampled_loss_is_keyed_and_configured_only_where_it_applies(tmp_path):
    from pipelines.config import ConfigError, load_config
    from pipelines.context import StageContext
    from pipelines.stages.train_sequential import checkpoint_settings

    def settings(*sets):
        return checkpoint_settings(StageContext(load_config(None, list(sets)), "2026-01-01", tmp_path), "sasrec", 1)

    assert settings("train_sequential.loss=sampled", "train_sequential.negatives=256")["negatives"] == 256
    assert "negatives" not in settings() and "negatives" not in settings("train_sequential.negatives=256")
    with pytest.raises(ConfigError, match="negatives"):
        load_config(None, ["train_sequential.negatives=0"])


def test_a_training_step_of_the_sequential_task_draws_fresh_negatives_and_never_touches_held_out_items():
    from models.configs import SASRecConfig
    from models.sasrec import SASRec
    from pipelines.evaluation.protocol import COLD_TEST, Csr, EvalData
    from pipelines.training.loop import Step
    from pipelines.training.sequential import SequentialTask

    rng = np.random.default_rng(0)
    rows = [list(rng.integers(1, N, 6)) for _ in range(16)]               # item N never in training
    hist = Csr(np.r_[0, np.cumsum([len(r) for r in rows])].astype(np.int64), np.concatenate(rows).astype(np.int32))
    flags = np.zeros(N + 1, np.int8)
    flags[N] = COLD_TEST
    data = EvalData(16, N, hist, np.ones(16, np.int32), np.ones(16, np.int32), flags)
    model = SASRec(SASRecConfig(hidden=8, n_layers=1, n_heads=1, dropout=0.0), N)

    class Engine:
        module = model

        def __call__(self, *a):
            return model(*a)

    task = SequentialTask(data, 10, 16, loss="sampled", negatives=8)
    assert task.sampler.q[N] == 0 and task.sampler.q[0] == 0
    out = task.loss(Engine(), task.batches(seed=0)[0], Step(0, 1, torch.device("cpu"), np.random.default_rng(0), 1))
    out.loss.backward()
    assert torch.isfinite(out.loss) and model.item_emb.weight.grad[N].abs().sum() == 0
