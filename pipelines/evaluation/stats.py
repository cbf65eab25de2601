"""Figures over seeds and paired intervals: what a claim that one model beats another rests on.

* ``ndcg_at(ranks, k)``: each user's NDCG@k from the target's 0-based rank (the protocol's definition).
* ``seed_t_interval(per_seed_deltas)``: the Student t interval of the mean of per-seed paired deltas (seed i of one
  model minus seed i of the other, each a figure over the same users). **The benchmark harness's default**
  (``tests/benchmarks/common.py``): it carries run-to-run training variance, which is what a second training of
  the same model would change, and with 3 to 5 seeds its t quantile (4.30 for 3 seeds, 2.78 for 5) keeps its
  coverage where a bootstrap over so few seeds cannot; it needs only the per-seed figures, so a results file can be
  re-rendered from its JSON alone.
* ``two_level_bootstrap(per_seed_user_diffs)``: the percentile interval under resampling seeds with replacement,
  then users within each drawn seed: training variance and user sampling together, from the per-user differences
  of each seed pair. The alternative the protocol allows; it needs the per-user ranks of every run, and with few
  seeds it is narrower than the t interval (a resample of 3 seeds holds at most 10 distinct seed sets).
* ``paired_bootstrap(diff)``: the percentile interval of the mean of per-user differences, users resampled with
  replacement (the same users for both models, so each user's difficulty cancels). Users alone: it leaves out
  training variance and understates the interval about twofold on this project's runs; kept for comparison.
* ``paired_difference(a, b)``: per-user NDCG@10 differences of two models over several seeds, seed i of one paired
  with seed i of the other, averaged over seeds per user, on the users every run scored (``per_seed=True``: one
  array per seed pair instead of their mean).
"""
from __future__ import annotations

import numpy as np


def ndcg_at(ranks: np.ndarray, k: int = 10) -> np.ndarray:
    ranks = np.asarray(ranks)
    return np.where(ranks < k, 1.0 / np.log2(ranks + 2.0), 0.0)


def seed_t_interval(per_seed_deltas, level: float = 0.95) -> tuple[float, float]:
    """Student t interval (``level``, two-sided, n - 1 degrees of freedom) of the mean of ``per_seed_deltas`` (one
    paired delta per seed, e.g. NDCG@10 of model seed i minus the reference's seed i, both over the same users)."""
    from scipy import stats

    d = np.asarray(per_seed_deltas, np.float64).ravel()
    if d.size < 2:
        raise ValueError(f"a t-interval over seeds needs the paired deltas of at least 2 seeds, got {d.size}; run "
                         "more seeds (the protocol asks for 3, 5 when the gain is under 5%)")
    if not np.all(np.isfinite(d)):
        raise ValueError(f"per-seed deltas must be finite numbers: {d.tolist()}")
    half = float(stats.t.ppf(0.5 + level / 2, d.size - 1) * d.std(ddof=1) / np.sqrt(d.size))
    return float(d.mean()) - half, float(d.mean()) + half


def two_level_bootstrap(per_seed_user_diffs: list[np.ndarray], n_boot: int = 2000, seed: int = 0,
                        level: float = 0.95, chunk: int = 100) -> tuple[float, float]:
    """Percentile interval of the mean over seeds of the per-user mean difference, each of ``n_boot`` resamples
    drawing as many seeds as there are with replacement, then, for every drawn seed, its users with replacement
    (a fresh draw each time a seed is drawn again).

    ``per_seed_user_diffs``: one 1-D array per seed pair, the per-user differences (model minus reference) of that
    pair; seeds may hold different numbers of users. Memory: at most ``chunk`` x (users of one seed) indices at once.
    """
    diffs = [np.asarray(d, np.float64).ravel() for d in per_seed_user_diffs]
    if not diffs or any(d.size == 0 for d in diffs):
        raise ValueError("two_level_bootstrap needs at least one seed, each with paired users")
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(diffs), size=(n_boot, len(diffs)))     # (B, S): the seeds each resample draws
    total = np.zeros(n_boot)
    for s, d in enumerate(diffs):
        rows = np.nonzero(picks == s)[0]                                 # one entry per draw of seed s
        means = np.empty(rows.size)
        for lo in range(0, rows.size, chunk):                            # (chunk, U_s) indices at a time
            n = min(chunk, rows.size - lo)
            means[lo:lo + n] = d[rng.integers(0, d.size, size=(n, d.size))].mean(1)
        np.add.at(total, rows, means)
    a = (1.0 - level) / 2
    low, high = np.quantile(total / len(diffs), [a, 1.0 - a])
    return float(low), float(high)


def paired_bootstrap(diff: np.ndarray, n_boot: int = 2000, seed: int = 0, level: float = 0.95,
                     chunk: int = 100) -> tuple[float, float]:
    """Percentile interval of ``diff.mean()`` under resampling users with replacement (``n_boot`` resamples).
    Users only: the interval leaves training variance out (see the module docstring)."""
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


def common_users(runs: list[dict]) -> np.ndarray:
    """The users (sorted) every run of ``runs`` scored (``keep`` dicts of ``evaluate``)."""
    common = None
    for r in runs:
        u = np.asarray(r["users"])
        common = np.unique(u) if common is None else np.intersect1d(common, u)
    return common if common is not None else np.array([], np.int64)


def paired_difference(runs_a: list[dict], runs_b: list[dict], k: int = 10, mask: str | None = None,
                      per_seed: bool = False) -> np.ndarray | list[np.ndarray]:
    """Per-user mean over seeds of NDCG@k(a) - NDCG@k(b). Each run is a ``keep`` dict of ``evaluate`` (``users``,
    ``full`` ranks, slice masks); run i of ``a`` is paired with run i of ``b``; only the users every run scored
    (``common_users``). ``mask``: only that slice's users. ``per_seed``: the per-user differences of each seed pair
    (a list, one array per pair, the users in the same order) instead of their mean."""
    if len(runs_a) != len(runs_b) or not runs_a:
        raise ValueError(f"paired runs needed: {len(runs_a)} and {len(runs_b)} runs")
    common = common_users([*runs_a, *runs_b])
    keep = _at(runs_a[0], mask, common).astype(bool) if mask is not None else np.ones(common.size, bool)
    pairs = [(ndcg_at(_at(ra, "full", common), k) - ndcg_at(_at(rb, "full", common), k))[keep]
             for ra, rb in zip(runs_a, runs_b, strict=True)]
    return pairs if per_seed else np.mean(pairs, axis=0)


def _at(run: dict, key: str, users: np.ndarray) -> np.ndarray:
    """``run[key]`` (aligned with ``run["users"]``) at ``users``."""
    u = np.asarray(run["users"])
    order = np.argsort(u, kind="stable")
    return np.asarray(run[key])[order[np.searchsorted(u[order], users)]]
