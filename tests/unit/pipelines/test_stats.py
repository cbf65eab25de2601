"""pipelines.evaluation.stats: per-user NDCG, paired differences over seeds, the intervals (users only, t over seeds,
two-level)."""
from __future__ import annotations

import numpy as np
import pytest

from pipelines.evaluation.stats import (
    common_users,
    ndcg_at,
    paired_bootstrap,
    paired_difference,
    seed_t_interval,
    two_level_bootstrap,
)


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


def test_seed_t_interval_is_the_student_t_interval_of_the_per_seed_deltas():
    # mean 2, sample sd 1, 3 seeds: 2 +- t(0.975, 2 df) / sqrt(3), t(0.975, 2) = 4.302652729...
    low, high = seed_t_interval([1.0, 2.0, 3.0])
    assert (low, high) == pytest.approx((2 - 4.302652729911275 / np.sqrt(3), 2 + 4.302652729911275 / np.sqrt(3)))
    # 90%: t(0.95, 2) = 2.919985580
    assert seed_t_interval([1.0, 2.0, 3.0], level=0.90) == pytest.approx((2 - 2.919985580 / np.sqrt(3),
                                                                          2 + 2.919985580 / np.sqrt(3)))
    assert seed_t_interval([0.5, 0.5]) == (0.5, 0.5)                   # no spread over seeds: no width
    # baselines.json's GRASP (descriptions) per-seed deltas: SE 0.0015 over seeds, t(2) quantile 4.30
    low, high = seed_t_interval([-0.0129, -0.0088, -0.0083])
    assert (low, high) == pytest.approx((-0.0163, -0.0037), abs=1e-4) and high < 0


def test_seed_t_interval_refuses_fewer_than_two_seeds():
    for few in ([], [0.01]):
        with pytest.raises(ValueError, match="at least 2 seeds"):
            seed_t_interval(few)
    with pytest.raises(ValueError, match="finite"):
        seed_t_interval([0.01, float("nan")])


def test_two_level_bootstrap_without_user_noise_resamples_the_seeds():
    # every user of a seed has the seed's difference: the interval is that of the mean of 3 seeds drawn with
    # replacement from {0, 1, 2}: its 2.5% and 97.5% quantiles lie strictly inside [0, 2] and around the mean 1
    diffs = [np.full(50, float(s)) for s in range(3)]
    low, high = two_level_bootstrap(diffs, n_boot=4000, seed=1)
    assert 0 <= low < 1 < high <= 2 and low < 0.5 and high > 1.5
    assert two_level_bootstrap([np.full(7, 0.3), np.full(9, 0.3)]) == pytest.approx((0.3, 0.3))
    assert two_level_bootstrap(diffs, seed=5) == two_level_bootstrap(diffs, seed=5)              # seeded
    # seeds of different sizes, and a chunk smaller than the number of draws of one seed (bounded memory)
    rng = np.random.default_rng(0)
    uneven = [rng.normal(0.1, 0.05, 300), rng.normal(0.1, 0.05, 120)]
    assert two_level_bootstrap(uneven, n_boot=500, chunk=7) == pytest.approx(
        two_level_bootstrap(uneven, n_boot=500, chunk=7))
    with pytest.raises(ValueError, match="paired users"):
        two_level_bootstrap([np.ones(3), np.array([])])


def seed_noise_toy(rng: np.random.Generator, seeds: int = 5, users: int = 300, seed_sd: float = 0.02,
                   user_sd: float = 0.1) -> list[np.ndarray]:
    """Per-user differences of ``seeds`` seed pairs of two equally good models: no true difference, each pair's
    training draws one offset N(0, seed_sd) shared by all its users, each user adds N(0, user_sd)."""
    return [rng.normal(0.0, seed_sd) + rng.normal(0.0, user_sd, users) for _ in range(seeds)]


def test_with_training_noise_the_seed_t_interval_holds_zero_about_95_percent_and_users_alone_far_less():
    rng = np.random.default_rng(43)
    reps, held = 200, {"t": 0, "users": 0, "two_level": 0}
    for rep in range(reps):
        per_seed = seed_noise_toy(rng)
        lo, hi = seed_t_interval([d.mean() for d in per_seed])
        held["t"] += lo <= 0 <= hi
        lo, hi = paired_bootstrap(np.mean(per_seed, axis=0), n_boot=400, seed=rep)
        held["users"] += lo <= 0 <= hi
        lo, hi = two_level_bootstrap(per_seed, n_boot=400, seed=rep)
        held["two_level"] += lo <= 0 <= hi
    cover = {k: v / reps for k, v in held.items()}
    assert cover["t"] >= 0.85, cover
    assert cover["users"] < cover["t"] - 0.3, cover          # the user-only bootstrap misses the seed variance
    assert cover["users"] < cover["two_level"] <= cover["t"], cover


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
    per_seed = paired_difference(a, b, per_seed=True)
    assert [p.tolist() for p in per_seed] == [pytest.approx([1.0, 0.0]), pytest.approx([0.0, 0.0])]
    assert common_users([*a, *b]).tolist() == [1, 2]


def test_paired_difference_needs_as_many_runs_on_each_side():
    with pytest.raises(ValueError, match="paired runs"):
        paired_difference([run([1], [0])], [])
