"""A deterministic synthetic shop: the embedded default data source.

The shop on day ``d`` (``d = ds - start_date`` in days) is a pure function of ``(params, d)``:

* items ``0 .. items_day0 + d * new_items_per_day - 1``: a category from a coherent vocabulary, a brand,
  a title, a description and a price level tied to the brand; item ``i`` is identical on every day.
* users ``0 .. users_day0 + d * new_users_per_day - 1``: latent tastes (a Dirichlet mixture concentrated on
  one or two categories) and a price level.
* events: a new user makes ``events_per_user`` purchases on the day they join; on every later day a
  fraction of the users come back for ``events_per_active_user`` more. Each purchase either follows the
  *sequential habit* of the shop (the item after ``prev`` in a fixed "bought next" chain that crosses into a
  complementary category, probability ``P_FOLLOW``) or is drawn from the user's tastes, with a Zipf
  popularity within the category. A sequential model can learn the chain; a factor model the tastes.

Everything before day ``d`` is replayed, so day ``d + 1`` holds all of day ``d`` plus that day's increment.

With ``scale`` > 0 (``scaled``) the shop is instead a static, Beauty-shaped one for scale benchmarks (issue 42):
``scale`` times Amazon Beauty's 22,363 users and 12,101 items, each user's history 5 + a negative binomial, drawn
by the same habit and tastes and with the same text fields, dated over the year before ``ds``; deterministic. At
scale 1: 197,416 interactions (Beauty 198,502), history length mean 8.8, median 5, 99th percentile 44 (Beauty 8.9,
6, 43); item popularity is more peaked than Beauty's (the top 1% of items take 23% of the interactions, Beauty's
10%; 318 items are never bought, Beauty's 5-core has none).
"""
from __future__ import annotations

import dataclasses
import datetime as dt
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from features import schemas

P_FOLLOW = 0.55
ITEM_BLOCK = 1024

VOCAB: list[tuple[str, list[str], list[str], list[str]]] = [
    # (category, nouns, adjectives, brands)
    ("Coffee", ["espresso beans", "filter coffee", "cold brew concentrate", "decaf roast", "coffee capsules"],
     ["dark roast", "single-origin", "smooth", "bold", "organic"], ["Roastery North", "Bean & Co", "Kaffa"]),
    ("Tea", ["green tea", "chai blend", "earl grey", "herbal infusion", "matcha powder"],
     ["loose-leaf", "organic", "spiced", "calming", "ceremonial"], ["Leaf House", "Camellia", "Steep"]),
    ("Running", ["running shoes", "trail socks", "hydration vest", "running shorts", "reflective jacket"],
     ["lightweight", "breathable", "cushioned", "waterproof", "reflective"], ["Stride", "Pace Lab", "Trailhead"]),
    ("Yoga", ["yoga mat", "cork block", "yoga strap", "meditation cushion", "yoga towel"],
     ["non-slip", "eco", "extra-thick", "travel", "grippy"], ["Lotus Studio", "Asana", "Breathe"]),
    ("Camping", ["tent", "sleeping bag", "camp stove", "headlamp", "water filter"],
     ["ultralight", "3-season", "compact", "rechargeable", "insulated"], ["Summit Gear", "Basecamp", "Northfold"]),
    ("Baking", ["stand mixer", "bread flour", "proofing basket", "baking steel", "piping set"],
     ["professional", "stone-ground", "non-stick", "heavy-duty", "stainless"], ["Crumb", "Hearth & Oven", "Levain"]),
    ("Skincare", ["face cleanser", "vitamin C serum", "night cream", "sunscreen SPF 50", "toner"],
     ["gentle", "hydrating", "fragrance-free", "brightening", "mineral"], ["Dermaline", "Glow Lab", "Pure Skin"]),
    ("Haircare", ["shampoo", "conditioner", "hair mask", "styling cream", "scalp serum"],
     ["sulfate-free", "repairing", "volumising", "curl-defining", "nourishing"], ["Mane", "Silk Roots", "Tress"]),
    ("Gaming", ["wireless controller", "gaming headset", "mechanical keyboard", "mouse pad", "capture card"],
     ["low-latency", "RGB", "ergonomic", "tournament", "wireless"], ["Pixel Forge", "Respawn", "Clutch"]),
    ("Books", ["fantasy novel", "sci-fi anthology", "cookbook", "travel guide", "graphic novel"],
     ["bestselling", "illustrated", "hardcover", "award-winning", "collector's"], ["Inkwell Press", "Folio", "Paperlane"]),
    ("Gardening", ["seed kit", "pruning shears", "raised bed", "compost bin", "watering can"],
     ["heirloom", "stainless", "cedar", "self-watering", "ergonomic"], ["Greenthumb", "Rootstock", "Bloom"]),
    ("Pet care", ["dog food", "cat litter", "chew toy", "pet shampoo", "grooming brush"],
     ["grain-free", "clumping", "durable", "hypoallergenic", "gentle"], ["Happy Paws", "Whisker", "Fetch"]),
]
SIZES = ["250 g", "500 g", "1 kg", "small", "medium", "large", "pack of 3", "30 ml", "100 ml", "one size"]


# Amazon Beauty 5-core (../shared/datasets/amazon-beauty): users, items, and the excess history length over the
# 5-core minimum as a negative binomial with its mean (3.88) and dispersion (0.24: Beauty's std of 8.2)
BEAUTY_USERS, BEAUTY_ITEMS = 22_363, 12_101
EXCESS_MEAN, EXCESS_DISPERSION = 3.88, 0.24


@dataclass(frozen=True)
class ShopParams:
    seed: int
    start_date: str
    n_categories: int
    items_day0: int
    users_day0: int
    new_items_per_day: int
    new_users_per_day: int
    events_per_user: int
    active_users_per_day: float
    events_per_active_user: int
    scale: float = 0.0


def day_index(start_date: str, ds: str) -> int:
    d = (dt.date.fromisoformat(ds) - dt.date.fromisoformat(start_date)).days
    if d < 0:
        raise ValueError(f"ds {ds} is before the synthetic shop's start_date {start_date}")
    return d


def _n_items(p: ShopParams, day: int) -> int:
    return p.items_day0 + day * p.new_items_per_day


def _n_users(p: ShopParams, day: int) -> int:
    return p.users_day0 + day * p.new_users_per_day


def _item_blocks(p: ShopParams, n: int) -> dict[str, np.ndarray]:
    """Per-item latent attributes, generated in fixed blocks so item ``i`` never changes."""
    n_cat = min(p.n_categories, len(VOCAB))
    cols: dict[str, list[np.ndarray]] = {k: [] for k in ("cat", "noun", "adj", "brand", "size", "price", "pop")}
    for b in range((n + ITEM_BLOCK - 1) // ITEM_BLOCK):
        r = np.random.default_rng([p.seed, 1, b])
        cols["cat"].append(r.integers(0, n_cat, ITEM_BLOCK))
        cols["noun"].append(r.integers(0, 5, ITEM_BLOCK))
        cols["adj"].append(r.integers(0, 5, ITEM_BLOCK))
        cols["brand"].append(r.integers(0, 3, ITEM_BLOCK))
        cols["size"].append(r.integers(0, len(SIZES), ITEM_BLOCK))
        cols["price"].append(r.lognormal(3.0, 0.6, ITEM_BLOCK))
        cols["pop"].append(r.pareto(1.2, ITEM_BLOCK) + 1.0)  # heavy-tailed popularity weight
    return {k: np.concatenate(v)[:n] for k, v in cols.items()}


def _next_links(p: ShopParams, cat: np.ndarray) -> np.ndarray:
    """The shop's "bought next" chain: item i -> an older item of the complementary category."""
    n = len(cat)
    n_cat = min(p.n_categories, len(VOCAB))  # not cat.max() + 1: that changes as the shop grows
    # One stream per array, so item i's draws do not depend on n (the shop grows every day).
    u = np.random.default_rng([p.seed, 2]).random(n)
    target_cat = np.where(np.random.default_rng([p.seed, 2, 1]).random(n) < 0.5, cat, (cat + 1) % n_cat)
    limit = np.maximum(np.arange(n), min(p.items_day0, n))  # only items that exist when i does
    nxt = np.empty(n, dtype=np.int64)
    for c in range(n_cat):
        pool = np.flatnonzero(cat == c)
        sel = np.flatnonzero(target_cat == c)
        count = np.searchsorted(pool, limit[sel])  # items of category c that exist when item i does
        none = count == 0
        nxt[sel[none]] = sel[none]  # no such item yet: the chain stays on i
        nxt[sel[~none]] = pool[np.minimum((u[sel[~none]] * count[~none]).astype(np.int64), count[~none] - 1)]
    return nxt


def _user_tastes(p: ShopParams, n_users: int, n_cat: int) -> np.ndarray:
    """(U, C) category preferences: concentrated on one or two categories per user."""
    r = np.random.default_rng([p.seed, 3])
    base = r.dirichlet(np.full(n_cat, 0.15), size=n_users)
    return base / base.sum(1, keepdims=True)


def _draw(r: np.random.Generator, users: np.ndarray, prev: np.ndarray, n_items: int, attrs: dict,
          nxt: np.ndarray, taste_cdf: np.ndarray) -> np.ndarray:
    """One purchase for each of ``users`` given their previous items (-1: none)."""
    cat = attrs["cat"][:n_items]
    out = np.empty(len(users), dtype=np.int64)
    follow = (prev >= 0) & (r.random(len(users)) < P_FOLLOW)
    out[follow] = nxt[prev[follow]]
    free = ~follow
    u = r.random(len(users))
    chosen_cat = (u[:, None] > taste_cdf[users]).sum(1)
    chosen_cat = np.minimum(chosen_cat, taste_cdf.shape[1] - 1)
    v = r.random(len(users))
    for c in np.unique(chosen_cat[free]):
        pool = np.flatnonzero(cat == c)
        sel = free & (chosen_cat == c)
        if not len(pool):
            out[sel] = r.integers(0, n_items, sel.sum())
            continue
        cdf = np.cumsum(attrs["pop"][pool])
        cdf /= cdf[-1]
        out[sel] = pool[np.minimum(np.searchsorted(cdf, v[sel]), len(pool) - 1)]
    return out


def generate(p: ShopParams, ds: str) -> dict[str, pa.Table]:
    """The shop as of ``ds``: ``interactions``, ``items`` and ``users`` tables (schemas in ``features.schemas``)."""
    day = day_index(p.start_date, ds)
    n_items, n_users = _n_items(p, day), _n_users(p, day)
    attrs = _item_blocks(p, n_items)
    nxt = _next_links(p, attrs["cat"])
    n_cat = min(p.n_categories, len(VOCAB))
    taste_cdf = np.cumsum(_user_tastes(p, n_users, n_cat), axis=1)
    start = int(dt.datetime.fromisoformat(p.start_date).replace(tzinfo=dt.timezone.utc).timestamp())
    last = np.full(n_users, -1, dtype=np.int64)
    first_seen = np.zeros(n_users, dtype=np.int64)
    ev_u, ev_i, ev_t = [], [], []
    for d in range(day + 1):
        r = np.random.default_rng([p.seed, 4, d])
        lo = 0 if d == 0 else _n_users(p, d - 1)
        new = np.arange(lo, _n_users(p, d))
        first_seen[new] = start + d * 86400
        old = np.arange(lo) if d else np.arange(0)
        back = old[r.random(len(old)) < p.active_users_per_day]
        steps_new = np.maximum(3, r.poisson(p.events_per_user, len(new)))
        users = np.concatenate([new, back])
        steps = np.concatenate([steps_new, np.full(len(back), p.events_per_active_user)])
        t0 = start + d * 86400 + r.integers(0, 3600, len(users))
        items_today = _n_items(p, d)
        for s in range(int(steps.max()) if len(steps) else 0):
            act = users[steps > s]
            it = _draw(r, act, last[act], items_today, attrs, nxt, taste_cdf)
            ev_u.append(act)
            ev_i.append(it)
            ev_t.append(t0[steps > s] + s * 1800)
            last[act] = it
    uu, ii, tt = (np.concatenate(x) if x else np.zeros(0, np.int64) for x in (ev_u, ev_i, ev_t))
    order = np.lexsort((uu, tt))
    uu, ii, tt = uu[order], ii[order], tt[order]
    interactions = pa.table({
        "user_id": pa.array([f"U{u:06d}" for u in uu], pa.string()),
        "item_id": pa.array([f"I{i:06d}" for i in ii], pa.string()),
        "timestamp": pa.array(tt, pa.int64()),
        "event_order": pa.array(np.arange(len(uu)), pa.int64()),
        "rating": pa.array(np.full(len(uu), 5.0, np.float32), pa.float32()),
    }, schema=schemas.INTERACTIONS)
    return {"interactions": interactions, "items": _items_table(attrs, n_items),
            "users": _users_table(first_seen)}


def scaled(p: ShopParams, ds: str) -> dict[str, pa.Table]:
    """The static Beauty-shaped shop of ``p.scale`` (see the module docstring): ``interactions``, ``items`` and
    ``users``; every event dated in the 365 days before ``ds``."""
    n_users, n_items = max(round(BEAUTY_USERS * p.scale), 1), max(round(BEAUTY_ITEMS * p.scale), 2)
    shop = dataclasses.replace(p, items_day0=n_items)                          # every item exists from the start
    attrs = _item_blocks(shop, n_items)
    nxt = _next_links(shop, attrs["cat"])
    taste_cdf = np.cumsum(_user_tastes(shop, n_users, min(p.n_categories, len(VOCAB))), axis=1)
    r = np.random.default_rng([p.seed, 5])
    q = EXCESS_DISPERSION / (EXCESS_DISPERSION + EXCESS_MEAN)
    steps = 5 + r.negative_binomial(EXCESS_DISPERSION, q, n_users)            # (U,) history lengths
    end = int(dt.datetime.fromisoformat(ds).replace(tzinfo=dt.timezone.utc).timestamp())
    first = end - 365 * 86400 + r.integers(0, 300 * 86400, n_users)           # each user's first purchase
    gap = np.minimum(r.integers(3600, 4 * 86400, n_users), (end - first) // steps)   # their spacing, within the year
    last = np.full(n_users, -1, dtype=np.int64)
    ev_u, ev_i, ev_t = [], [], []
    for k in range(int(steps.max())):
        act = np.flatnonzero(steps > k)
        it = _draw(r, act, last[act], n_items, attrs, nxt, taste_cdf)
        ev_u.append(act)
        ev_i.append(it)
        ev_t.append(first[act] + k * gap[act])
        last[act] = it
    uu, ii, tt = (np.concatenate(x) for x in (ev_u, ev_i, ev_t))
    order = np.lexsort((uu, tt))                                               # by time (stable: a user's in order)
    uu, ii, tt = uu[order], ii[order], tt[order]
    interactions = pa.table({
        "user_id": pa.array(np.char.add("U", np.char.zfill(uu.astype(str), 7)), pa.string()),
        "item_id": pa.array(np.char.add("I", np.char.zfill(ii.astype(str), 7)), pa.string()),
        "timestamp": pa.array(tt, pa.int64()),
        "event_order": pa.array(np.arange(len(uu)), pa.int64()),
        "rating": pa.array(np.full(len(uu), 5.0, np.float32), pa.float32()),
    }, schema=schemas.INTERACTIONS)
    items = _items_table(attrs, n_items, width=7)
    return {"interactions": interactions, "items": items, "users": _users_table(first, width=7)}


def _items_table(attrs: dict, n: int, width: int = 6) -> pa.Table:
    titles, brands, cats, descs, prices = [], [], [], [], []
    for i in range(n):
        cname, nouns, adjs, brs = VOCAB[attrs["cat"][i]]
        noun, adj, brand = nouns[attrs["noun"][i]], adjs[attrs["adj"][i]], brs[attrs["brand"][i]]
        size = SIZES[attrs["size"][i]]
        price = round(float(attrs["price"][i]) * (1.0 + 0.4 * attrs["brand"][i]), 2)
        titles.append(f"{brand} {adj} {noun}, {size}")
        brands.append(brand)
        cats.append([cname, noun])
        art = "An" if adj[0] in "aeiou" else "A"
        descs.append(f"{art} {adj} {noun} from {brand} for {cname.lower()} enthusiasts. Size: {size}.")
        prices.append(price)
    return pa.table({
        "item_id": pa.array([f"I{i:0{width}d}" for i in range(n)], pa.string()),
        "title": titles, "brand": brands, "categories": pa.array(cats, pa.list_(pa.string())),
        "description": descs, "price": pa.array(prices, pa.float64()),
    }, schema=schemas.ITEMS)


def _users_table(first_seen: np.ndarray, width: int = 6) -> pa.Table:
    return pa.table({
        "user_id": pa.array([f"U{u:0{width}d}" for u in range(len(first_seen))], pa.string()),
        "external_id": pa.array([None] * len(first_seen), pa.string()),
        "first_seen": pa.array(first_seen, pa.int64()),
    }, schema=schemas.USERS)
