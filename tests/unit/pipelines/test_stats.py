"""pipelines.evaluation.stats: per-user NDCG, paired differences over seeds, the bootstrap interval."""
from __future__ import annotations

import numpy as np
import pytest

from pipelines.evaluation.stats import ndcg_at, paired_bootstrap, paired_difference


def test_ndcg_at_matches_the_protocol():
    assert ndcg_at(np.array([0, 1, 9, 10]), 10).tolist() == pytest.approx([1.0, 1 / np.log2(3), 1 / np.log2(11), 0.0])


def test_interval_excludes_zero_only_for_a_real_difference():
    rng = np.random.default_rng(0)
    noise = rng.normal(0, 0.1, 5000)
    low, high = paired_bootstrap(noise + 0.02, seed=1)
    assert 0 < low < 0.02 < high
    low, high = paired_bootstrap(noise - noise.mean(), seed=1)
    assert low < 0 < high
    assert paired_bootstrap(noise, seed=3) == paired_bootstrap(noise, seed=3)      # seeded


def test_interval_width_shrinks_like_one_over_root_n():
    rng = np.random.default_rng(2)
    small = np.diff(paired_bootstrap(rng.normal(0, 1, 400), seed=0))[0]
    large = np.diff(paired_bootstrap(rng.normal(0, 1, 6400), seed=0))[0]
    assert large == pytest.approx(small / 4, rel=0.25)


def run(users, ranks, short=None):
    r = {"users": np.array(users), "full": np.array(ranks)}
    if short is not None:
        r["short_history"] = np.array(short, bool)
    return r


def test_paired_difference_pairs_users_and_seeds_and_averages_over_seeds():
    # seed 0: a ranks user 1 at 0, b at 10 (outside the top 10); seed 1: both at 0 for user 1
    a = [run([1, 2], [0, 1], [True, False]), run([2, 1], [1, 0], [False, True])]   # users in another order
    b = [run([1, 2, 3], [10, 1, 0], [True, False, True]), run([1, 2, 3], [0, 1, 0], [True, False, True])]
    d = paired_difference(a, b)
    assert d.tolist() == pytest.approx([0.5, 0.0])        # user 3 was not scored by a: left out
    assert paired_difference(a, b, mask="short_history").tolist() == pytest.approx([0.5])


def test_paired_difference_needs_as_many_runs_on_each_side():
    with pytest.raises(ValueError, match="paired runs"):
        paired_difference([run([1], [0])], [])
