"""The cold-item baselines (issue 38, ``DESIGN.md`` "Evaluation protocol", Cold items), scored by the evaluate stage
beside the day's models when the split held cold items out (``split.cold_items``):

* ``content_knn``: cosine between a recency-weighted mean of the text vectors of the user's history (weight
  ``decay**age``, the most recent item age 0) and every item's text vector; ``decay`` chosen on the cold-valid
  users from ``DECAY_GRID``. ``content_knn_last``: the last history item's text vector alone.
* ``sasrec_fill_in``, ``wals_fill_in``: the trained model, each cold item's row replaced by the mean of the trained
  rows of its ``FILL_K`` most text-similar warm items (items with a trained row); user vectors and warm rows as
  trained.
* ``sasrec_regressor``: ridge regression from the text vector to SASRec's trained item row, fit on the warm items
  with a trained row; each cold item gets the regressor's output, rescaled so the cold rows' mean norm is ``scale``
  times the trained rows'; the ridge penalty and ``scale`` chosen on the cold-valid users (``RIDGE_GRID`` x
  ``SCALE_GRID``).

This module holds content kNN, the choice on the cold-valid users, the text vectors and the grids; the fill-in and
the regressor, which build on the trained models' ``FactorScorer``, are ``filled`` and ``regressed`` in
``pipelines.evaluation.scorers``, whose ``model_zoo`` adds them all (``add_cold_start``).

Text vectors: the ``metadata`` source of ``text_embeddings`` (title, brand, category, price, the catalogue's own
description: ``features.text.item_metadata_text``), items only, so nothing in them comes from interactions or
reviews. Every choice is made on the cold-valid group (valid phase, users whose valid target is cold), full-ranking
NDCG@10, ties to the earlier grid value; the choice and the grid land in ``metrics.json`` (``notes``). No cold
item has a trained row or a history entry (the split keeps them out of training), so nothing here can read a cold
item's interactions. Evaluated, not served.
"""
from __future__ import annotations

from typing import Callable, Hashable

import numpy as np
import pyarrow.compute as pc

from features.cold_start import cosine_scores, recency_ages, recency_profiles
from features.embeddings import vectors_of
from jobs import warehouse
from pipelines.context import StageContext
from pipelines.evaluation.protocol import EvalData, Scorer, metrics_from_ranks, target_ranks

TEXT_SOURCE = "metadata"
DECAY_GRID = (0.3, 0.5, 0.7, 1.0)
SCALE_GRID = (0.25, 0.5, 0.75, 1.0, 1.5, 2.0)
RIDGE_GRID = (0.1, 1.0, 10.0)
FILL_K = 5
# the text gate (``features.cold_start.text_gate``): a cold item scored by its text's match to the user's last item,
# in deviations of that user's usual match; the threshold scanned from the highest (fewest new items shown) down
GATE_GAMMA = 4.0
GATE_THRESHOLDS = (8.0, 7.0, 6.0, 5.0, 4.5, 4.0, 3.5, 3.0, 2.5, 2.0)
MODELS = ("content_knn", "content_knn_last", "sasrec_fill_in", "sasrec_regressor", "sasrec_text_gate",
          "wals_fill_in")
CHOSEN_ON = "cold-valid NDCG@10"


class ContentKnn:
    """score(users, phase) = cosine(recency-weighted mean of the history's text vectors, every item's text vector)."""

    def __init__(self, data: EvalData, text: np.ndarray, decay: float) -> None:
        self.data, self.text, self.decay = data, text, decay
        self.notes: dict = {}

    def score(self, users: np.ndarray, phase: str) -> np.ndarray:
        hist = self.data.history(phase)
        rows, items = hist.rows(users)
        ages = recency_ages(hist.lengths()[users])
        prof = recency_profiles(self.text, rows, items, ages, len(users), self.decay)   # (B, D)
        return cosine_scores(prof, self.text)                                          # (B, N + 1)


def cold_valid_users(data: EvalData) -> np.ndarray:
    """The users every cold-item choice is made on: those whose valid target is a cold(-valid) item."""
    return np.flatnonzero(data.groups("valid").get("cold", np.zeros(data.n_users, bool)))


def warm_valid_users(data: EvalData) -> np.ndarray:
    """The users with a valid target that is not a cold item."""
    return np.flatnonzero((data.valid > 0) & ~data.cold_mask()[data.valid])


def valid_ndcg(scorer: Scorer, data: EvalData, users: np.ndarray, batch: int = 1024) -> float:
    """Full-ranking NDCG@10 of ``users`` on the valid phase (the test phase is never read)."""
    dummy = np.zeros((data.n_users, 1), np.int32)                              # only the full ranking is read
    full, *_ = target_ranks(scorer, data, "valid", users, dummy, batch)
    return metrics_from_ranks(full, (10,))["NDCG@10"]


def choose_on_cold_valid(candidates: dict[Hashable, Callable[[], Scorer]], data: EvalData,
                         batch: int = 1024) -> tuple[Hashable, dict, int]:
    """The key of ``candidates`` whose scorer has the highest full-ranking NDCG@10 on the cold-valid users (ties to
    the earlier key; the first key when there are none), every key's figure, and the number of users. The test
    phase is never read."""
    users = cold_valid_users(data)
    if len(users) == 0:
        return next(iter(candidates)), {}, 0
    grid = {key: valid_ndcg(make(), data, users, batch) for key, make in candidates.items()}
    return max(grid, key=grid.get), grid, len(users)


def content_knn(data: EvalData, text: np.ndarray, batch: int = 1024) -> tuple[ContentKnn, None]:
    decay, grid, n = choose_on_cold_valid({d: lambda d=d: ContentKnn(data, text, d) for d in DECAY_GRID}, data, batch)
    m = ContentKnn(data, text, float(decay))
    m.notes = {"decay": decay, "chosen_on": CHOSEN_ON if grid else "no cold-valid users: first of the grid",
               "cold_valid_users": n, "cold_valid_NDCG@10_by_decay": grid, "text_source": TEXT_SOURCE}
    return m, None


def content_knn_last(data: EvalData, text: np.ndarray) -> tuple[ContentKnn, None]:
    m = ContentKnn(data, text, 0.0)                                            # 0**0 = 1: the last item alone
    m.notes = {"decay": 0.0, "text_source": TEXT_SOURCE}
    return m, None


def profiles(data: EvalData, text: np.ndarray, phase: str, decay: float) -> np.ndarray:
    """(U, D) every user's recency-weighted mean of the text vectors of the phase's history (``recency_profiles``)."""
    hist = data.history(phase)
    rows, items = hist.rows(np.arange(data.n_users))
    return recency_profiles(text, rows, items, recency_ages(hist.lengths()), data.n_users, decay)


def trained_items(data: EvalData, items: np.ndarray, phase: str) -> np.ndarray:
    """Indices of the warm items with a trained row in ``items`` (N + 1, H): an interaction in the ``phase``
    history the model was fit on (train: ``valid``; train + valid: ``test``) and a non-zero row."""
    ok = (data.popularity(phase) > 0) & ~data.cold_mask() & (np.abs(items).sum(1) > 0)
    ok[0] = False
    return np.flatnonzero(ok)


def text_vectors(ctx: StageContext, n_items: int, source: str = TEXT_SOURCE) -> np.ndarray:
    """(N + 1, D) item text vectors of ``source`` (row 0 and items without one zero)."""
    emb = warehouse.read_arrow(ctx.home, "text_embeddings", ctx.ds)
    vec, idx, _ = vectors_of(emb, "item", source)
    out = np.zeros((n_items + 1, vec.shape[1]), np.float32)
    keep = idx <= n_items
    out[idx[keep]] = vec[keep]
    return out


def text_missing(ctx: StageContext, source: str = TEXT_SOURCE) -> str | None:
    """Why the item text vectors of ``source`` cannot be had this day, or None."""
    if not warehouse.partition_path(ctx.home, "text_embeddings", ctx.ds).exists():
        return (f"no text_embeddings for ds={ctx.ds}: run the embed stage (with '{source}' in embed.sources) "
                "before evaluate")
    t = warehouse.read_arrow(ctx.home, "text_embeddings", ctx.ds, columns=["kind", "source"])
    if not pc.any(pc.and_(pc.equal(t.column("kind"), "item"), pc.equal(t.column("source"), source))).as_py():
        return (f"text_embeddings of ds={ctx.ds} has no item vectors from source '{source}': add it to "
                "embed.sources and re-run embed")
    return None
