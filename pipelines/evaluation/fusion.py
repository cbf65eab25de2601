"""Late fusion (issue 39, mechanism 5): a trained model's scores plus ``beta`` times the text match of every item to
the user's history, both standardised per user:

    score(u, i) = z(model(u, i)) + beta * z(cos(p_u, t_i)),   p_u = sum_a decay**a t_(history item of age a)

(``cold_start.ContentKnn``: the recency-weighted mean of the history's item text vectors, the most recent item age
0; ``z`` standardises each user's row over all items; with ``eval.late_fusion_align`` the text vectors are first
mapped into the model's item space by InfoNCE, ``aligned``). ``beta`` and ``decay`` are chosen on the valid phase
(full-ranking NDCG@10 of every valid user, ties to the earlier grid value; the test phase is never read); at
``beta = 0`` the ranking is the model's own. Scored by the evaluate stage as ``<model>_late_fusion`` for each model
of ``eval.late_fusion``, from the item text vectors of ``eval.late_fusion_text``. Evaluated, not served: the row
says whether the fusion earns a serving path.

Nothing here reads interactions beyond the history the model itself is scored from: item text vectors are written
from the catalogue's facts (or the LLM's descriptions of them), and the profile averages the vectors of the items in
the phase's history.
"""
from __future__ import annotations

import numpy as np

from features.cold_start import infonce_map
from pipelines.evaluation.cold_start import DECAY_GRID, ContentKnn, trained_items
from pipelines.evaluation.protocol import EvalData, Scorer, metrics_from_ranks, target_ranks

BETA_GRID = (0.0, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0)


def standardise(x: np.ndarray) -> np.ndarray:
    """Each row to zero mean and unit variance (a constant row to zeros)."""
    x = np.asarray(x, dtype=np.float32)
    return (x - x.mean(1, keepdims=True)) / np.maximum(x.std(1, keepdims=True), 1e-12)


class FusionScorer:
    """``z(base) + beta * z(text)``, per user over all items."""

    def __init__(self, base: Scorer, text: Scorer, beta: float) -> None:
        self.base, self.text, self.beta = base, text, beta
        self.notes: dict = {}

    def score(self, users: np.ndarray, phase: str) -> np.ndarray:
        s = standardise(self.base.score(users, phase))
        if self.beta:
            s += self.beta * standardise(self.text.score(users, phase))
        return s


def aligned(text: np.ndarray, base: Scorer, data: EvalData) -> np.ndarray:
    """``text`` mapped into ``base``'s item space (``features.cold_start.infonce_map``), fit on the items with a
    trained row in the model the valid phase is scored with (trained on the train part only, so the test phase
    reads nothing it did not): (N + 1, H), padding and items without text zero."""
    items = base.by_phase["valid"][1]                                          # a FactorScorer's (N + 1, H) table
    rows = np.intersect1d(trained_items(data, items, "valid"), np.flatnonzero(np.abs(text).sum(1) > 0))
    out = text @ infonce_map(text, items, rows)
    out[np.abs(text).sum(1) == 0] = 0
    return out


def late_fusion(base: Scorer, text: np.ndarray, data: EvalData, text_source: str, batch: int = 1024,
                grid: tuple[float, ...] = BETA_GRID, align: bool = False) -> tuple[FusionScorer, None]:
    """``base`` fused with content kNN over ``text`` ((N + 1, D) item vectors; with ``align`` first mapped into
    the model's item space, ``aligned``), ``beta`` x ``decay`` chosen on the valid phase (every user with a valid
    target); the choice and the valid grid in the scorer's ``notes``."""
    if align:
        text = aligned(text, base, data)
    users = np.flatnonzero(data.valid > 0)
    dummy = np.zeros((data.n_users, 1), np.int32)                              # only the full ranking is read
    figures: dict[str, float] = {}
    for decay in DECAY_GRID:
        for beta in grid:
            if beta == 0 and decay != DECAY_GRID[0]:                           # beta 0 ignores the text
                continue
            full, *_ = target_ranks(FusionScorer(base, ContentKnn(data, text, decay), beta), data, "valid", users,
                                    dummy, batch)
            figures[f"beta={beta},decay={decay}"] = metrics_from_ranks(full, (10,))["NDCG@10"]
    best = max(figures, key=figures.get)
    beta, decay = (float(kv.split("=")[1]) for kv in best.split(","))
    scorer = FusionScorer(base, ContentKnn(data, text, decay), beta)
    scorer.notes = {"beta": beta, "decay": decay, "chosen_on": "valid NDCG@10 (full ranking, every valid user)",
                    "valid_users": int(len(users)), "text_source": text_source, "aligned": align,
                    "valid_NDCG@10_by_setting": figures}
    return scorer, None
