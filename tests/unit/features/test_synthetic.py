"""features.synthetic: a deterministic shop that only grows, day by day."""
from __future__ import annotations

import dataclasses
import datetime as dt

import numpy as np
import pyarrow as pa
import pytest

from features import schemas, synthetic
from features.synthetic import ShopParams, day_index, generate

SMALL = ShopParams(seed=3, start_date="2026-01-01", n_categories=12, items_day0=60, users_day0=50,
                   new_items_per_day=7, new_users_per_day=5, events_per_user=6,
                   active_users_per_day=0.3, events_per_active_user=2)
DAYS = ["2026-01-01", "2026-01-02", "2026-01-03", "2026-01-05"]


@pytest.fixture(scope="module")
def shops() -> dict[str, dict[str, pa.Table]]:
    return {ds: generate(SMALL, ds) for ds in DAYS}


def _events(t: pa.Table) -> list[tuple[str, str, int]]:
    return list(zip(t.column("user_id").to_pylist(), t.column("item_id").to_pylist(),
                    t.column("timestamp").to_pylist(), strict=True))


def test_day_index():
    assert day_index("2026-01-01", "2026-01-01") == 0
    assert day_index("2026-01-01", "2026-03-01") == 59
    with pytest.raises(ValueError, match="before"):
        day_index("2026-01-01", "2025-12-31")


def test_two_calls_are_equal(shops):
    again = generate(SMALL, "2026-01-03")
    for name in ("interactions", "items", "users"):
        assert again[name].equals(shops["2026-01-03"][name]), name


def test_a_different_seed_gives_a_different_shop(shops):
    other = generate(ShopParams(**{**SMALL.__dict__, "seed": 4}), "2026-01-01")
    assert not other["interactions"].equals(shops["2026-01-01"]["interactions"])


def test_schemas_match(shops):
    for tables in shops.values():
        assert set(tables) == {"interactions", "items", "users"}
        for name, tbl in tables.items():
            assert tbl.schema.equals(schemas.TABLES[name]), name
            schemas.check_schema(name, tbl.schema)


def test_sizes_on_day_zero_and_their_growth(shops):
    # users_day0 + d * new_users_per_day, items_day0 + d * new_items_per_day
    for ds, d in zip(DAYS, (0, 1, 2, 4), strict=True):
        assert shops[ds]["users"].num_rows == 50 + 5 * d
        assert shops[ds]["items"].num_rows == 60 + 7 * d


def test_every_user_of_the_day_has_events_and_ids_are_dense(shops):
    t = shops["2026-01-03"]
    users = set(t["interactions"].column("user_id").to_pylist())
    assert users == {f"U{u:06d}" for u in range(60)}  # every user joins with >= 3 events
    items = set(t["items"].column("item_id").to_pylist())
    assert items == {f"I{i:06d}" for i in range(74)}
    assert set(t["interactions"].column("item_id").to_pylist()) <= items


def test_event_order_is_the_row_number_and_time_is_sorted(shops):
    t = shops["2026-01-03"]["interactions"]
    assert t.column("event_order").to_pylist() == list(range(t.num_rows))
    ts = t.column("timestamp").to_pylist()
    assert ts == sorted(ts)
    start = int(dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc).timestamp())
    assert start <= ts[0] and ts[-1] < start + 3 * 86400


@pytest.mark.parametrize("a,b", [(DAYS[0], DAYS[1]), (DAYS[1], DAYS[2]), (DAYS[2], DAYS[3])])
def test_next_day_strictly_grows(shops, a, b):
    for name in ("users", "items", "interactions"):
        assert shops[b][name].num_rows > shops[a][name].num_rows, name


@pytest.mark.parametrize("a,b", [(DAYS[0], DAYS[1]), (DAYS[1], DAYS[2]), (DAYS[0], DAYS[3])])
def test_next_day_replays_every_earlier_interaction(shops, a, b):
    old, new = shops[a]["interactions"], shops[b]["interactions"]
    # day b holds all of day a's events, in the same order, as its first rows
    assert new.slice(0, old.num_rows).equals(old)
    # and the later rows are all dated after day a
    last_old = max(old.column("timestamp").to_pylist())
    assert min(new.slice(old.num_rows).column("timestamp").to_pylist()) > last_old


@pytest.mark.parametrize("a,b", [(DAYS[0], DAYS[1]), (DAYS[0], DAYS[3])])
def test_items_and_users_are_identical_across_days(shops, a, b):
    for name in ("items", "users"):
        old, new = shops[a][name], shops[b][name]
        assert new.slice(0, old.num_rows).equals(old), name


def test_item_blocks_do_not_depend_on_the_shop_size():
    small = synthetic._item_blocks(SMALL, 10)
    large = synthetic._item_blocks(SMALL, 3000)  # crosses ITEM_BLOCK boundaries
    for k in small:
        assert (large[k][:10] == small[k]).all(), k


TINY = ShopParams(**{**SMALL.__dict__, "items_day0": 4, "new_items_per_day": 1})  # day 0 lacks most categories


@pytest.mark.parametrize("params,n_small", [(SMALL, 60), (SMALL, 67), (TINY, 4), (TINY, 5), (TINY, 9)])
def test_next_links_of_item_i_do_not_change_as_the_shop_grows(params, n_small):
    attrs = synthetic._item_blocks(params, 400)
    small = synthetic._next_links(params, attrs["cat"][:n_small])
    large = synthetic._next_links(params, attrs["cat"])
    assert small.tolist() == large[:n_small].tolist()


def test_tiny_shop_replays_earlier_days():
    a, b = generate(TINY, "2026-01-01")["interactions"], generate(TINY, "2026-01-04")["interactions"]
    assert b.slice(0, a.num_rows).equals(a)


@pytest.mark.parametrize("params", [SMALL, TINY], ids=["small", "tiny"])
def test_next_links_point_to_items_that_already_exist(params):
    attrs = synthetic._item_blocks(params, 400)
    nxt = synthetic._next_links(params, attrs["cat"])
    for i, j in enumerate(nxt.tolist()):
        # day-0 items exist together; a later item links to an older one (or to itself when its
        # target category has no older item)
        assert j == i or j < max(i, params.items_day0), (i, j)


# ----------------------------------------------------------------------------- the Beauty-shaped shop (scale)

def test_the_scaled_shop_is_beauty_shaped_deterministic_and_grows_with_the_scale():
    p = dataclasses.replace(SMALL, scale=0.05)
    a, b = synthetic.scaled(p, "2026-11-24"), synthetic.scaled(p, "2026-11-24")
    assert all(a[k].equals(b[k]) for k in a)
    for name, schema in (("interactions", schemas.INTERACTIONS), ("items", schemas.ITEMS), ("users", schemas.USERS)):
        assert a[name].schema.equals(schema)
    inter = a["interactions"]
    assert a["users"].num_rows == round(22_363 * 0.05) and a["items"].num_rows == round(12_101 * 0.05)
    per_user = np.unique(inter.column("user_id").to_numpy(zero_copy_only=False), return_counts=True)[1]
    assert per_user.min() >= 5 and 7.5 < per_user.mean() < 10.5                # Beauty: 5-core, mean 8.9
    ts = inter.column("timestamp").to_numpy()
    end = int(dt.datetime(2026, 11, 24, tzinfo=dt.timezone.utc).timestamp())
    assert (np.diff(ts) >= 0).all() and ts.max() < end and ts.min() >= end - 365 * 86400
    assert inter.column("event_order").to_pylist() == list(range(inter.num_rows))
    assert all(a["items"].column(c).null_count == 0 for c in ("title", "brand", "description", "price"))
    bigger = synthetic.scaled(dataclasses.replace(p, scale=0.15), "2026-11-24")["interactions"].num_rows
    assert 2.5 < bigger / inter.num_rows < 3.5                                 # interactions grow with the scale
