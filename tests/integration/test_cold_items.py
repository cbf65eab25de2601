"""The cold-item protocol end to end on a hand-made dated catalogue (``split.cold_items``): the split holds the items
first seen last out of training, and no cold item reaches a training sequence, a softmax, a WALS fit (implicit and
Spark) or the user histories the LLM stages describe (whose texts make the user neighbours); cold items are still
scored over the full ranking. Spark in local mode.

Items a..l; first seen (day): a b f 1, c d g 2, e 3, h 5, i 7, j 8, k l 9. A share of 0.34 of 12 items is 4:
the latest are i, j, k, l (no tie at the boundary: h, the next, is day 5). Events (item and day, in order):

  u1  a1 b2 c3 i7 j8   last j cold: i leaves; j the cold target
  u2  a1 d2 e3 k9      last k cold
  u3  b1 c2 i7 f8 g9   last g warm: i leaves; train b c, valid f, test g
  u4  c2 e3 l9         last l cold
  u5  f1 g2 h5         warm: train f, valid g, test h
  u6  g4 h5 k9         last k cold
  u7  d2 j8            two events: short, dropped (as without the protocol)
  u8  d2 k9 l9         last l cold, one warm event left: dropped and counted (cold_users_dropped)
  u9  a1 j8 b9         last b warm, two warm events left: short, dropped
"""
from __future__ import annotations

import os

os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from features import schemas  # noqa: E402
from jobs import split as job  # noqa: E402
from jobs import warehouse  # noqa: E402
from pipelines.config import load_config  # noqa: E402
from pipelines.context import StageContext  # noqa: E402

pytestmark = pytest.mark.slow

DS = "2026-01-05"
DAY = 86_400
SPARK = ["spark.shuffle_partitions=2", "split.cold_items=0.34"]
EVENTS = {"u1": "a1 b2 c3 i7 j8", "u2": "a1 d2 e3 k9", "u3": "b1 c2 i7 f8 g9", "u4": "c2 e3 l9", "u5": "f1 g2 h5",
          "u6": "g4 h5 k9", "u7": "d2 j8", "u8": "d2 k9 l9", "u9": "a1 j8 b9"}
COLD = {"i", "j", "k", "l"}


def _write_shop(home) -> None:
    rows = [(u, e[0], int(e[1:]) * DAY, o) for u, evs in EVENTS.items() for o, e in enumerate(evs.split())]
    u, i, t, o = zip(*rows, strict=True)
    warehouse.write_arrow(pa.table({"user_id": list(u), "item_id": list(i), "timestamp": pa.array(t, pa.int64()),
                                    "event_order": pa.array(o, pa.int64()),
                                    "rating": pa.array([5.0] * len(rows), pa.float32())}, schema=schemas.INTERACTIONS),
                          home, "interactions", DS)
    items = sorted(set(i))
    warehouse.write_arrow(pa.table({"item_id": items, "title": [f"item {x}" for x in items], "brand": [None] * 12,
                                    "categories": [["shop"]] * 12, "description": [None] * 12,
                                    "price": [1.0] * 12}, schema=schemas.ITEMS), home, "items", DS)


def _ctx(home, *sets: str) -> StageContext:
    return StageContext(load_config(None, [*SPARK, *sets]), DS, home)


@pytest.fixture(scope="module")
def cold_home(tmp_path_factory):
    from pipelines.stages import split as stage

    home = tmp_path_factory.mktemp("cold_shop")
    _write_shop(home)
    return home, stage.run(_ctx(home))


def _halves(home, ds=DS) -> dict[str, str]:
    return {r["item_id"]: r["half"] for r in warehouse.read_arrow(home, "cold_items", ds).to_pylist()}


def _sequences(home) -> dict[str, list[str]]:
    """user_id -> ["item:split", ...] in position order."""
    users = {r["user_idx"]: r["user_id"] for r in warehouse.read_arrow(home, "user_map", DS).to_pylist()}
    items = {r["item_idx"]: r["item_id"] for r in warehouse.read_arrow(home, "item_map", DS).to_pylist()}
    out: dict[str, list[str]] = {}
    for r in sorted(warehouse.read_arrow(home, "sequences", DS).to_pylist(), key=lambda r: (r["user_idx"], r["position"])):
        assert r["position"] == len(out.get(users[r["user_idx"]], []))    # positions renumbered without gaps
        out.setdefault(users[r["user_idx"]], []).append(f"{items[r['item_idx']]}:{r['split']}")
    return out


def _expected(halves: dict[str, str]) -> dict[str, list[str]]:
    def cold_user(warm: str, target: str) -> list[str]:
        if halves[target] == "test":
            return [f"{x}:train" for x in warm[:-1]] + [f"{warm[-1]}:valid", f"{target}:test"]
        return [f"{x}:train" for x in warm] + [f"{target}:valid"]

    return {"u1": cold_user("abc", "j"), "u2": cold_user("ade", "k"), "u3": ["b:train", "c:train", "f:valid", "g:test"],
            "u4": cold_user("ce", "l"), "u5": ["f:train", "g:valid", "h:test"], "u6": cold_user("gh", "k")}


def test_latest_holds_out_the_items_first_seen_last(cold_home):
    home, res = cold_home
    halves = _halves(home)
    assert set(halves) == COLD
    assert sorted(halves.values()) == ["test", "test", "valid", "valid"]   # two disjoint halves
    assert _sequences(home) == _expected(halves)
    n_valid = sum(halves[t] == "valid" for t in ("j", "k", "l", "k"))     # u1, u2, u4, u6's targets
    assert res.details["cold"] == {"by": "latest", "share": 0.34, "seed": 2024, "cold_items": 4,
                                   "cold_valid_items": 2, "cold_test_items": 2, "cold_valid_users": n_valid,
                                   "cold_test_users": 4 - n_valid, "cold_users_dropped": 1, "warm_test_users": 2,
                                   "cold_interactions_removed": 5}
    assert res.tables["item_map"] == 12 and res.tables["users_dropped"] == 3          # cold items stay in the map
    assert "cold_items" in res.outputs


def test_random_is_seeded_and_reproducible_and_off_leaves_no_cold_table(tmp_path):
    _write_shop(tmp_path)
    params = {"cold_items": 0.34, "cold_by": "random", "cold_seed": 2024}
    spark = _ctx(tmp_path).spark_args()
    job.run(str(tmp_path), DS, params, *spark)
    first = _halves(tmp_path)
    job.run(str(tmp_path), DS, params, *spark)
    assert _halves(tmp_path) == first and len(first) == 4 and sorted(first.values()) == ["test", "test", "valid",
                                                                                          "valid"]
    job.run(str(tmp_path), DS, {**params, "cold_seed": 7}, *spark)
    assert set(_halves(tmp_path)) != set(first)                  # another seed, another share
    counts = job.run(str(tmp_path), DS, {}, *spark)              # the protocol off: no stale cold items stay
    assert not warehouse.partition_path(tmp_path, "cold_items", DS).exists() and job.read_cold(tmp_path, DS) is None
    assert "cold_items" not in counts and counts["users_evaluated"] == 8


def _cold_idx(home) -> np.ndarray:
    return warehouse.read_arrow(home, "cold_items", DS).column("item_idx").to_numpy()


def test_no_cold_item_in_training_sequences_or_described_histories(cold_home):
    from pipelines.catalogue import load_catalogue
    from pipelines.evaluation.data import load_eval_data
    from pipelines.training.sequential import SequentialTask

    home, _ = cold_home
    ctx, cold = _ctx(home), _cold_idx(home)
    seq = warehouse.read_arrow(home, "sequences", DS).to_pylist()
    assert not [r for r in seq if r["split"] == "train" and r["item_idx"] in cold]
    data, _, _ = load_eval_data(ctx)
    assert sorted(np.flatnonzero(data.cold_mask())) == sorted(cold)
    assert not np.isin(data.train.indices, cold).any() and not np.isin(data.history("test").indices, cold).any()
    task = SequentialTask(data, max_len=4, batch_size=4)
    assert not np.isin(task.train.seqs, cold).any()             # inputs and next-item targets alike
    cat = load_catalogue(ctx)                                   # describe's user texts (and so user neighbours)
    assert not np.isin(np.concatenate([np.asarray(h) for h in cat.histories.values()]), cold).any()
    assert (cat.popularity[cold] == 0).all()


@pytest.mark.parametrize("loss", ["ce", "bce"])
def test_a_training_step_leaves_the_cold_rows_untouched(cold_home, loss):
    from models.configs import SASRecConfig
    from models.sasrec import SASRec
    from pipelines.evaluation.data import load_eval_data
    from pipelines.training.loop import Step
    from pipelines.training.sequential import SequentialTask

    home, _ = cold_home
    data, _, _ = load_eval_data(_ctx(home))
    torch.manual_seed(0)
    model = SASRec(SASRecConfig(hidden=8, n_layers=1, n_heads=1, dropout=0.0, max_len=4), data.n_items)

    class Engine:
        module = model

        def __call__(self, *a):
            return model(*a)

    task = SequentialTask(data, max_len=4, batch_size=8, loss=loss)
    for seed in range(5):                                       # BCE's negatives are sampled: several draws
        for rows in task.batches(seed):
            step = Step(0, 1, torch.device("cpu"), np.random.default_rng(seed))
            task.loss(Engine(), rows, step).loss.backward()
    grad = model.item_emb.weight.grad
    assert (grad[_cold_idx(home).copy()] == 0).all() and (grad[1:].abs().sum(1) > 0).sum() > 0


def test_wals_fits_never_see_a_cold_item(cold_home, monkeypatch):
    from jobs import wals as spark_wals
    from pipelines.backends import wals

    home, _ = cold_home
    ctx, cold = _ctx(home), _cold_idx(home)
    seen = {}

    def fake_fit(m, p, init=None, iterations=None):
        seen["m"] = m.toarray()
        return np.zeros((m.shape[0], 2), np.float32), np.zeros((m.shape[1], 2), np.float32), 0.0

    monkeypatch.setattr(wals, "fit_implicit", fake_fit)
    wals.fit(ctx, ctx.cfg.wals, ("train", "valid"), "scratch")  # the refit: a cold-valid target is a valid row
    assert seen["m"][:, cold].sum() == 0 and seen["m"].sum() == 10 + 6 - 1  # train + valid but u1's valid j
    out = spark_wals.run(str(home), DS, {"factors": 2, "iterations": 1, "regularization": 0.1, "alpha": 1.0,
                                         "splits": ["train", "valid"], "zone": "scratch"}, *ctx.spark_args())
    fitted = warehouse.read_arrow(home, "item_factors", DS, zone="scratch").column("item_idx").to_numpy()
    assert out["item_factors"] == 8 and not np.isin(fitted, cold).any()    # the 8 warm items only


def test_cold_items_are_scored_in_the_full_ranking(cold_home):
    from pipelines.evaluation.data import load_eval_data
    from pipelines.evaluation.protocol import draw_negatives, evaluate
    from pipelines.evaluation.scorers import FactorScorer

    home, _ = cold_home
    data, _, _ = load_eval_data(_ctx(home))
    items = np.zeros((data.n_items + 1, 1), np.float32)
    items[:, 0] = data.cold                                     # a model that ranks the new items first, cold-test
    users = np.ones((data.n_users, 1), np.float32)
    m = FactorScorer({"valid": (users, items), "test": (users, items)})
    out = evaluate(m, data, draw_negatives(data, 3, 0), "test", ks=(2, 10))
    assert out["cold"]["full"]["HR@2"] == 1.0                   # the target and the other cold-test item on top
    assert out["cold"]["full"]["users"] == int(data.groups("test")["cold"].sum()) > 0
    assert out["warm"]["full"]["HR@2"] == 0.0 and out["warm"]["cold_share_top10"]["share"] > 0.25
