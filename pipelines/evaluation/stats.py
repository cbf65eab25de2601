"""Figures over seeds and paired intervals over users: what a claim that one model beats another rests on.

* ``ndcg_at(ranks, k)``: each user's NDCG@k from the target's 0-based rank (the protocol's definition).
* ``paired_bootstrap(diff)``: the percentile 95% interval of the mean of per-user differences, users resampled
  with replacement (the same users for both models, so each user's difficulty cancels).
* ``paired_difference(a, b)``: per-user NDCG@10 differences of two models over several seeds, seed i of one paired
  with seed i of the other, averaged over seeds per user, on the users every run scored.
"""
from __future__ import annotations

import numpy as np


def ndcg_at(ranks: np.ndarray, k: int = 10) -> np.ndarray:
    ranks = np.asarray(ranks)
    return np.where(ranks < k, 1.0 / np.log2(ranks + 2.0), 0.0)


def paired_bootstrap(diff: np.ndarray, n_boot: int = 2000, seed: int = 0, level: float = 0.95,
                     chunk: int = 100) -> tuple[float, float]:
    """Percentile interval of ``diff.mean()`` under resampling users with replacement (``n_boot`` resamples)."""
    diff = np.asarray(diff, np.float64)
    if diff.size == 0:
        raise ValueError("no paired users to bootstrap over")
    rng = np.random.default_rng(seed)
    means = np.empty(n_boot)
    for lo in range(0, n_boot, chunk):  # (chunk, U) indices at a time: bounded memory for large user sets
        n = min(chunk, n_boot - lo)
        means[lo:lo + n] = diff[rng.integers(0, diff.size, size=(n, diff.size))].mean(1)
    a = (1.0 - level) / 2
    low, high = np.quantile(means, [a, 1.0 - a])
    return float(low), float(high)


def paired_difference(runs_a: list[dict], runs_b: list[dict], k: int = 10,
                      mask: str | None = None) -> np.ndarray:
    """Per-user mean over seeds of NDCG@k(a) - NDCG@k(b). Each run is a ``keep`` dict of ``evaluate`` (``users``,
    ``full`` ranks, slice masks); run i of ``a`` is paired with run i of ``b``. ``mask``: only that slice's users."""
    if len(runs_a) != len(runs_b) or not runs_a:
        raise ValueError(f"paired runs needed: {len(runs_a)} and {len(runs_b)} runs")
    common = None
    for r in (*runs_a, *runs_b):
        u = np.asarray(r["users"])
        common = u if common is None else np.intersect1d(common, u)
    d = np.mean([ndcg_at(_at(ra, "full", common), k) - ndcg_at(_at(rb, "full", common), k)
                 for ra, rb in zip(runs_a, runs_b, strict=True)], axis=0)
    return d[_at(runs_a[0], mask, common).astype(bool)] if mask is not None else d


def _at(run: dict, key: str, users: np.ndarray) -> np.ndarray:
    """``run[key]`` (aligned with ``run["users"]``) at ``users``."""
    u = np.asarray(run["users"])
    order = np.argsort(u, kind="stable")
    return np.asarray(run[key])[order[np.searchsorted(u[order], users)]]
