"""Late fusion (issue 39, mechanism 5): a model's standardised scores plus beta times content kNN's, chosen on valid."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from pipelines.evaluation import fusion
from pipelines.evaluation.cold_start import ContentKnn
from pipelines.evaluation.protocol import draw_negatives, evaluate
from pipelines.evaluation.scorers import FactorScorer
from tests.unit.pipelines.test_cold_start import _data, _home

TEXT = np.array([[0, 0, 0], [1, 0, 0], [0.9, 0.1, 0], [0, 1, 0], [0, 0.9, 0.1], [0, 0, 1]], np.float32)


def _factors(rng: np.random.Generator, n_users: int) -> FactorScorer:
    u, v = rng.normal(size=(n_users, 4)).astype(np.float32), rng.normal(size=(6, 4)).astype(np.float32)
    return FactorScorer({"valid": (u, v), "test": (u, v)})


def test_at_beta_zero_the_ranking_is_the_models_own():
    d = _data([[1, 3], [2]], [4, 5], [5, 1], {}, 5)
    base = _factors(np.random.default_rng(0), 2)
    users = np.arange(2)
    for phase in ("valid", "test"):
        own, fused = base.score(users, phase), fusion.FusionScorer(base, ContentKnn(d, TEXT, 0.5), 0.0).score(users, phase)
        assert (np.argsort(-own, 1) == np.argsort(-fused, 1)).all()
    neg = draw_negatives(d, 1, 0)
    assert (evaluate(base, d, neg, "test", ks=(10,))["full"]
            == evaluate(fusion.FusionScorer(base, ContentKnn(d, TEXT, 0.5), 0.0), d, neg, "test", ks=(10,))["full"])


def test_the_fused_score_is_the_sum_of_the_standardised_scores():
    d = _data([[1, 3]], [4], [5], {}, 5)
    base, text = _factors(np.random.default_rng(1), 1), ContentKnn(d, TEXT, 0.5)
    users = np.array([0])

    def z(x):
        return (x - x.mean()) / x.std()

    want = z(base.score(users, "test")[0]) + 0.3 * z(text.score(users, "test")[0])
    assert fusion.FusionScorer(base, text, 0.3).score(users, "test")[0] == pytest.approx(want, abs=1e-5)


def test_beta_is_chosen_on_valid_and_recorded():
    # the model ranks item 5 first for everyone; every valid target is the text twin of the user's last item, so a
    # text weight wins on valid; the test targets are the model's favourite, which beta 0 would rank first
    d = _data([[1], [3], [1, 3]], [2, 4, 4], [5, 5, 5], {}, 5)
    v = np.array([[0, 0], [0.1, 0], [0, 0], [0.1, 0], [0, 0], [1, 0]], np.float32)
    base = FactorScorer({ph: (np.ones((3, 2), np.float32), v) for ph in ("valid", "test")})
    m, arrays = fusion.late_fusion(base, TEXT, d, "metadata", grid=(0.0, 1.0, 2.0))
    assert arrays is None and m.beta > 0 and m.notes["beta"] == m.beta and m.notes["valid_users"] == 3
    assert m.notes["valid_NDCG@10_by_setting"][f"beta=0.0,decay={fusion.DECAY_GRID[0]}"] < 1.0
    assert max(m.notes["valid_NDCG@10_by_setting"].values()) == 1.0 and m.notes["text_source"] == "metadata"
    neg = draw_negatives(d, 1, 0)
    assert evaluate(base, d, neg, "test", ks=(10,))["full"]["NDCG@10"] == 1.0   # test alone would have kept beta 0


def test_the_zoo_adds_the_fused_model_or_says_why_not(tmp_path):
    from pipelines.evaluation.scorers import model_zoo

    ctx = _home(tmp_path / "a", cold=False)
    ctx = dataclasses.replace(ctx, cfg=dataclasses.replace(
        ctx.cfg, eval=dataclasses.replace(ctx.cfg.eval, late_fusion=("sasrec", "grasp"))))
    skipped: dict = {}
    assert list(model_zoo(ctx, skipped)) == ["popularity", "wals", "sasrec", "sasrec_late_fusion"]
    assert "train it first" in skipped["grasp_late_fusion"]
    ctx2 = _home(tmp_path / "b", cold=False, text=False)
    ctx2 = dataclasses.replace(ctx2, cfg=ctx.cfg)
    skipped = {}
    assert "sasrec_late_fusion" not in model_zoo(ctx2, skipped)
    assert "run the embed stage" in skipped["sasrec_late_fusion"]


def test_the_infonce_map_aligns_text_with_the_item_space_from_the_fit_rows():
    from features.cold_start import infonce_map

    rng = np.random.default_rng(0)
    text = rng.normal(size=(300, 12)).astype(np.float32)
    target = np.tanh(text @ rng.normal(size=(12, 6))).astype(np.float32)   # a monotone image of a linear map
    w = infonce_map(text, target, np.arange(200), epochs=60)
    q = text[200:] @ w                                                    # items the map never saw
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    t = target[200:] / np.linalg.norm(target[200:], axis=1, keepdims=True)
    assert ((q @ t.T).argmax(1) == np.arange(100)).mean() > 0.5           # chance: 0.01


def test_an_aligned_fusion_maps_the_text_through_the_models_trained_items():
    d = _data([[1, 3], [2, 4], [1, 4]], [4, 5, 3], [5, 1, 2], {}, 5)
    base = _factors(np.random.default_rng(2), 3)
    m, _ = fusion.late_fusion(base, TEXT, d, "metadata", grid=(0.0, 0.5), align=True)
    assert m.notes["aligned"] is True and m.text.text.shape == (6, 4)      # into the model's 4 dimensions
    assert (m.text.text[0] == 0).all()                                     # padding stays zero
