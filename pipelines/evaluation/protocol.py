"""The evaluation protocol every model is scored with (``DESIGN.md``, "Evaluation protocol").

* Leave-one-out per user. ``phase='valid'``: target = valid item, history = train items.
  ``phase='test'``: target = test item, history = train + valid items.
* Full ranking over all items ``1..N``; the user's history is excluded from the candidates, the target never.
* 100 sampled negatives per user, uniform over items the user never touched, drawn once with a seeded
  generator (``draw_negatives``) and stored, so every model is ranked on the same 101 candidates.
* Rank of the target = number of candidates scoring strictly higher + number of *other* candidates tying
  with it (ties count against the target, so constant scores earn nothing). A NaN score is the worst: a NaN
  target is beaten by every candidate, a NaN candidate beats no target but a NaN one (``against_target``, the
  one place this rule lives; the torch fast path ``pipelines.training.ranking`` uses it too).
* HR@k = 1[rank < k]; NDCG@k = 1[rank < k] / log2(rank + 2); MRR = mean 1 / (rank + 1) (untruncated).
* Slices: ``short_history`` users (history length at or below the ``short_quantile`` quantile) and
  ``tail_items`` (users whose target is outside the most popular ``1 - tail_fraction`` of items by train
  popularity; items tied with the last head item are head too, so no tie is broken by item id).
* Cold items (``split.cold_items``, ``EvalData.cold``): the groups ``cold`` (users whose target is a cold item:
  cold-test users in the test phase, cold-valid users in the valid phase) and ``warm`` (the other users with a
  target), the same full ranking over all items; for cold users also ``cold_only`` (the target's rank among the cold
  items alone), for warm users ``cold_share_top10`` (the share of cold items in their top 10, ties shared out).
  A cold item is never in a history: the split keeps them out, and the test history leaves out a cold valid target.

A model is anything with ``score(users, phase) -> (B, N + 1) float32`` scores (column 0 is padding).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import pyarrow as pa

from features.neighbours import block_rows


class Scorer(Protocol):
    def score(self, users: np.ndarray, phase: str) -> np.ndarray:  # (B,) -> (B, N + 1)
        ...


@dataclass
class Csr:
    """Ragged per-user item lists: items of user u are ``indices[indptr[u]:indptr[u + 1]]``."""

    indptr: np.ndarray   # (U + 1,) int64
    indices: np.ndarray  # (nnz,) int32

    def lengths(self) -> np.ndarray:
        return np.diff(self.indptr)

    def rows(self, users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(row-in-batch, item) pairs for the given users, vectorised."""
        starts, ends = self.indptr[users], self.indptr[users + 1]
        lens = ends - starts
        row = np.repeat(np.arange(len(users)), lens)
        offs = np.arange(lens.sum()) - np.repeat(np.cumsum(lens) - lens, lens)
        return row, self.indices[np.repeat(starts, lens) + offs]


@dataclass
class EvalData:
    n_users: int
    n_items: int          # items are 1..n_items
    train: Csr            # per user, train items in time order
    valid: np.ndarray     # (U,) valid target, 0 where the user has none
    test: np.ndarray      # (U,) test target, 0 where the user has none
    cold: np.ndarray | None = None  # (N + 1,) int8: 0 warm, COLD_VALID, COLD_TEST; None: the protocol is off
    _test_history: Csr | None = None

    def history(self, phase: str) -> Csr:
        """Items the model may see before the target: train (valid phase) or train + valid (test phase)."""
        if phase == "valid":
            return self.train
        if phase != "test":
            raise ValueError(f"phase must be 'valid' or 'test', got {phase!r}")
        if self._test_history is None:
            tl, has = self.train.lengths(), (self.valid > 0) & ~self.cold_mask()[self.valid]
            indptr = np.concatenate([[0], np.cumsum(tl + has)]).astype(np.int64)
            row = np.repeat(np.arange(self.n_users), tl)
            indices = np.empty(indptr[-1], dtype=np.int32)
            indices[indptr[row] + np.arange(len(row)) - self.train.indptr[row]] = self.train.indices
            indices[indptr[1:][has] - 1] = self.valid[has]
            self._test_history = Csr(indptr, indices)
        return self._test_history

    def targets(self, phase: str) -> np.ndarray:
        return self.valid if phase == "valid" else self.test

    def cold_mask(self) -> np.ndarray:
        """(N + 1,) bool: the cold items (both halves); all False when the protocol is off."""
        return np.zeros(self.n_items + 1, bool) if self.cold is None else self.cold > 0

    def groups(self, phase: str) -> dict[str, np.ndarray]:
        """(U,) masks ``cold`` (the phase's target is a cold item: cold-test users in the test phase, cold-valid
        users in the valid phase, the group to choose on) and ``warm`` (the other users with a target); ``{}``
        when the protocol is off."""
        if self.cold is None:
            return {}
        t = self.targets(phase)
        cold = (t > 0) & self.cold_mask()[t]
        return {"cold": cold, "warm": (t > 0) & ~cold}

    def popularity(self, phase: str) -> np.ndarray:
        """(N + 1,) interaction counts in the phase's history (column 0 = 0)."""
        return np.bincount(self.history(phase).indices, minlength=self.n_items + 1)[: self.n_items + 1]


def from_sequences(seq: pa.Table, n_users: int, n_items: int, cold: pa.Table | None = None) -> EvalData:
    """Build ``EvalData`` from a ``sequences`` table (``user_idx, item_idx, position, split``) and, with the
    cold-item protocol on, its ``cold_items`` table (``item_idx, half``)."""
    u = seq.column("user_idx").to_numpy()
    i = seq.column("item_idx").to_numpy().astype(np.int32)
    p = seq.column("position").to_numpy()
    s = seq.column("split").to_numpy(zero_copy_only=False)
    order = np.lexsort((p, u))
    u, i, s = u[order], i[order], s[order]
    tr = s == "train"
    indptr = np.concatenate([[0], np.cumsum(np.bincount(u[tr], minlength=n_users))]).astype(np.int64)
    valid = np.zeros(n_users, np.int32)
    test = np.zeros(n_users, np.int32)
    valid[u[s == "valid"]] = i[s == "valid"]
    test[u[s == "test"]] = i[s == "test"]
    flags = None if cold is None else cold_flags(cold, n_items)
    return EvalData(n_users, n_items, Csr(indptr, i[tr]), valid, test, flags)


COLD_VALID, COLD_TEST = 1, 2


def cold_flags(cold: pa.Table, n_items: int) -> np.ndarray:
    """(N + 1,) int8 of a ``cold_items`` table: ``COLD_VALID``/``COLD_TEST`` for its items, 0 for the others."""
    out = np.zeros(n_items + 1, np.int8)
    half = np.asarray(cold.column("half").to_pylist(), dtype=object)
    out[cold.column("item_idx").to_numpy()] = np.where(half == "valid", COLD_VALID, COLD_TEST)
    return out


def draw_negatives(data: EvalData, n: int, seed: int) -> np.ndarray:
    """(U, n) items each user never touched (train, valid or test), uniform without replacement.

    Vectorised rejection sampling: draw a surplus per user, drop touched items and repeats, keep the first
    ``n``; rows left short are redrawn. Deterministic for a given ``seed``.
    """
    rng = np.random.default_rng(seed)
    touched = data.history("test")
    cold_valid = (data.valid > 0) & data.cold_mask()[data.valid]                 # not in the test history
    lens = touched.lengths() + (data.test > 0) + cold_valid
    if (data.n_items - lens < n).any():
        raise ValueError(f"some users have touched more than n_items - {n} items; cannot draw {n} negatives")
    row, items = touched.rows(np.arange(data.n_users))
    every = np.arange(data.n_users, dtype=np.int64) * (data.n_items + 1)
    keys = np.unique(np.concatenate([row.astype(np.int64) * (data.n_items + 1) + items, every + data.test,
                                     every[cold_valid] + data.valid[cold_valid]]))
    out = np.zeros((data.n_users, n), np.int32)
    todo = np.arange(data.n_users)
    width = 2 * n + 16
    while len(todo):
        cand = rng.integers(1, data.n_items + 1, size=(len(todo), width))
        bad = np.isin(todo[:, None].astype(np.int64) * (data.n_items + 1) + cand, keys)
        srt = np.sort(cand, axis=1)  # drop repeats within a row: keep the first occurrence
        first = np.argsort(cand, axis=1, kind="stable")
        dup_sorted = np.concatenate([np.zeros((len(todo), 1), bool), srt[:, 1:] == srt[:, :-1]], axis=1)
        dup = np.zeros_like(bad)
        np.put_along_axis(dup, first, dup_sorted, axis=1)
        ok = ~(bad | dup)
        enough = ok.sum(1) >= n
        for_rows = np.flatnonzero(enough)
        if len(for_rows):
            # first n valid entries of each row, in draw order
            idx = np.argsort(~ok[for_rows], axis=1, kind="stable")[:, :n]
            out[todo[for_rows]] = np.take_along_axis(cand[for_rows], idx, axis=1)
        todo = todo[~enough]
    return out


def against_target(scores, target_scores):
    """(B, C) mask of the candidates that count against each row's target: those scoring at or above it (ties count
    against the target), and every candidate where the target scores NaN (a NaN score is the worst, so a diverged
    model ranks its target last). A NaN candidate never beats a finite target (``NaN >= t`` is false).

    ``scores`` (B, C) and ``target_scores`` (B,), numpy arrays or torch tensors alike (only ``>=``, ``!=`` and ``|``).
    """
    t = target_scores[:, None]
    return (scores >= t) | (t != t)                                            # t != t: the target is NaN


def scoring_batch(n_items: int, batch: int) -> int:
    """Users per full-ranking batch: at most ``batch``, and no more than keep the batch's (B, N + 1) float32 scores
    with their boolean masks and comparisons (about 12 bytes a cell) within ``features.neighbours.BLOCK_BUDGET``
    (``block_rows``): Beauty's 12,101 items keep a batch of 4,096 users; a catalogue of 10^6 items scores about 90
    users at a time instead of needing 48 GB."""
    return block_rows(n_items + 1, batch, 12)


def target_ranks(model: Scorer, data: EvalData, phase: str, users: np.ndarray, negatives: np.ndarray,
                 batch: int, candidates: tuple[int, ...] = (), cold: dict | None = None) -> tuple[np.ndarray, ...]:
    """0-based ranks of each user's target: full ranking and among the sampled negatives, one scoring pass; then,
    for each ``n`` of ``candidates``, among the first ``n - 1`` negatives (the n-candidate protocol). ``cold``: a
    dict that receives, from the same pass, ``cold_only`` (the target's rank among the cold items alone) and
    ``cold_top10`` (the cold items' share of the user's top 10), per user (``cold_probe``)."""
    from pipelines.progress import progress

    hist, targets = data.history(phase), data.targets(phase)
    full = np.empty(len(users), np.int64)
    sampled = np.empty(len(users), np.int64)
    subsets = {n: np.empty(len(users), np.int64) for n in candidates}
    if cold is not None:
        cold.update(cold_only=np.empty(len(users), np.int64), cold_top10=np.empty(len(users), np.float64))
    batch = scoring_batch(data.n_items, batch)
    for lo in progress(range(0, len(users), batch), desc=f"evaluate {phase}", unit="batch", leave=False,
                       disable=len(users) <= 4 * batch or None):
        b = users[lo:lo + batch]
        rows = np.arange(len(b))
        s = np.asarray(model.score(b, phase), dtype=np.float32)               # (B, N + 1), read only
        ts = s[rows, targets[b]]                                              # (B,)
        ns = np.take_along_axis(s, negatives[b].astype(np.int64), axis=1)     # (B, n_neg)
        beats = against_target(ns, ts)                                        # ties and NaN against the target
        sampled[lo:lo + len(b)] = beats.sum(1)
        for n, ranks in subsets.items():
            ranks[lo:lo + len(b)] = beats[:, : n - 1].sum(1)
        r, items = hist.rows(b)
        cand = candidates_mask(s.shape, r, items, targets[b])                 # (B, N + 1)
        beats = against_target(s, ts) & cand
        full[lo:lo + len(b)] = beats.sum(1) - 1                               # minus the target itself
        if cold is not None:
            probe = cold_probe(s, beats, cand, data.cold_mask())
            cold["cold_only"][lo:lo + len(b)], cold["cold_top10"][lo:lo + len(b)] = probe
    return (full, sampled, *subsets.values())


def cold_probe(s: np.ndarray, beats: np.ndarray, cand: np.ndarray, cold: np.ndarray,
               k: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Per row of scores ``s`` (B, N + 1): the target's 0-based rank among the cold candidates alone (``beats``: the
    candidates counting against the target, the target included; meaningful where the target is cold) and the
    share of cold items (``cold`` (N + 1,) bool) among the top ``k`` candidates. Items tied with the k-th best
    share its remaining places (each gets an equal part), so no tie is broken by item id; a NaN score is the worst."""
    cold_only = (beats & cold).sum(1) - 1                                      # minus the (cold) target itself
    x = np.where(cand & ~np.isnan(s), s, -np.inf)                              # (B, N + 1)
    kk = np.minimum(k, cand.sum(1))                                            # (B,) fewer candidates than k
    best = -np.sort(np.partition(-x, int(kk.max()) - 1, axis=1)[:, :int(kk.max())], axis=1)  # (B, k) best first
    kth = np.take_along_axis(best, (kk - 1)[:, None], axis=1)                  # (B, 1) the k-th best score
    above, tie = x > kth, (x == kth) & cand
    n_cold = (above & cold).sum(1) + (kk - above.sum(1)) * (tie & cold).sum(1) / np.maximum(tie.sum(1), 1)
    return cold_only, n_cold / np.maximum(kk, 1)


def candidates_mask(shape: tuple[int, int], rows: np.ndarray, items: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """(B, N + 1) full-ranking candidates: every item but the history (``rows``, ``items``) and the padding column;
    the target always is one. A mask, not -inf scores, so a -inf or NaN target is not tied by history or padding."""
    cand = np.ones(shape, bool)
    cand[rows, items] = False
    cand[:, 0] = False
    cand[np.arange(shape[0]), targets] = True
    return cand


def metrics_from_ranks(ranks: np.ndarray, ks: tuple[int, ...]) -> dict[str, float]:
    """HR@k, NDCG@k, MRR from 0-based ranks of a single target per user."""
    if len(ranks) == 0:
        return {**{f"HR@{k}": 0.0 for k in ks}, **{f"NDCG@{k}": 0.0 for k in ks}, "MRR": 0.0, "users": 0}
    ranks = np.asarray(ranks)
    out: dict[str, float] = {}
    gain = 1.0 / np.log2(ranks + 2.0)
    for k in ks:
        out[f"HR@{k}"] = float((ranks < k).mean())
    for k in ks:
        out[f"NDCG@{k}"] = float(np.where(ranks < k, gain, 0.0).mean())
    out["MRR"] = float((1.0 / (ranks + 1.0)).mean())
    out["users"] = int(len(ranks))
    return out


def slice_masks(data: EvalData, phase: str, short_quantile: float, tail_fraction: float) -> dict[str, np.ndarray]:
    """Boolean (U,) masks of the ``short_history`` and ``tail_items`` slices."""
    lens = data.history(phase).lengths()
    has = data.targets(phase) > 0
    short = lens <= np.quantile(lens[has], short_quantile) if has.any() else np.zeros_like(has)
    pop = data.popularity("valid")[1:]                                   # train popularity of items 1..N
    n_head = int(np.ceil(round((1.0 - tail_fraction) * data.n_items, 9)))  # round: 1 - 0.7 = 0.30000000000000004
    head = np.zeros(data.n_items + 1, bool)
    if n_head > 0:
        # items as popular as the n_head-th most popular one are all head: no tie is broken by item id, so the
        # slice does not depend on how ids were assigned; an item never bought is never head
        bar = np.sort(pop)[::-1][min(n_head, data.n_items) - 1]
        head[1:] = (pop >= bar) & (pop > 0)
    tail = ~head[data.targets(phase)]
    return {"short_history": short & has, "tail_items": tail & has}


def evaluate(model: Scorer, data: EvalData, negatives: np.ndarray, phase: str = "test",
             ks: tuple[int, ...] = (5, 10, 20), batch: int = 2048, short_quantile: float = 0.2,
             tail_fraction: float = 0.8, users: np.ndarray | None = None, candidates: tuple[int, ...] = (),
             keep: dict | None = None) -> dict:
    """``{"full": {...}, "sampled100": {...}, "cand20": {...}, "slices": {slice: {"full": {...}, ...}}}``, and with
    the cold-item protocol on (``data.cold``) the groups ``cold`` and ``warm`` (``cold_groups``).

    ``users``: score only these users (those of them with a target in ``phase``); default all. Slices are defined
    on all users either way. ``candidates``: sizes ``n`` of extra candidate protocols (``cand<n>``: the target and
    the first ``n - 1`` of the stored negatives, so as frozen as they are); each must be at most the negatives + 1.
    ``keep``: a dict that receives the per-user detail the figures were computed from: ``users``, the 0-based
    rank of each protocol (``full``, ...) and each slice's membership, aligned with ``users`` (what paired
    comparisons between models need).
    """
    bad = [n for n in candidates if not 2 <= n <= negatives.shape[1] + 1]
    if bad:
        raise ValueError(f"eval.candidates {bad}: each must be 2 to n_negatives + 1 ({negatives.shape[1] + 1})")
    has = data.targets(phase) > 0
    users = np.flatnonzero(has) if users is None else np.asarray(users)[has[users]]
    probe = {} if data.cold is not None else None
    full, sampled, *subsets = target_ranks(model, data, phase, users, negatives, batch, tuple(candidates), probe)
    ranks = {"full": full, f"sampled{negatives.shape[1]}": sampled,
             **{f"cand{n}": r for n, r in zip(candidates, subsets, strict=True)}}
    out = {name: metrics_from_ranks(r, ks) for name, r in ranks.items()}
    out["slices"] = {}
    if keep is not None:
        keep.update(users=users, **ranks)
    for name, mask in slice_masks(data, phase, short_quantile, tail_fraction).items():
        m = mask[users]
        out["slices"][name] = {proto: metrics_from_ranks(r[m], ks) for proto, r in ranks.items()}
        if keep is not None:
            keep[name] = m
    if probe is not None:
        out.update(cold_groups(data, phase, users, ranks, probe, ks, keep))
    return out


def cold_groups(data: EvalData, phase: str, users: np.ndarray, ranks: dict[str, np.ndarray], probe: dict,
                ks: tuple[int, ...], keep: dict | None = None) -> dict:
    """``{"cold": {protocol: metrics, "cold_only": metrics}, "warm": {protocol: metrics, "cold_share_top10":
    {"share", "catalogue", "users"}}}`` of the evaluated ``users``, from their ``ranks`` and the ``probe`` of
    ``target_ranks``. ``catalogue``: the cold items' share of all items, what a ranking blind to them would give.
    ``keep`` receives the group memberships and the probe, aligned with ``users``."""
    g = {name: mask[users] for name, mask in data.groups(phase).items()}
    out = {name: {proto: metrics_from_ranks(r[m], ks) for proto, r in ranks.items()} for name, m in g.items()}
    out["cold"]["cold_only"] = metrics_from_ranks(probe["cold_only"][g["cold"]], ks)
    top = probe["cold_top10"][g["warm"]]
    out["warm"]["cold_share_top10"] = {"share": float(top.mean()) if len(top) else 0.0, "users": int(len(top)),
                                       "catalogue": float(data.cold_mask()[1:].mean())}
    if keep is not None:
        keep.update(**g, **probe)
    return out


def random_baseline(n: int, k: int) -> dict[str, float]:
    """HR@k and NDCG@k of a random ranking of ``n`` candidates (the target's rank uniform over 0..n-1): what an
    n-candidate figure must be read against (n = 20, k = 10: HR 0.5000, NDCG 0.2272)."""
    ranks = np.arange(n)
    return metrics_from_ranks(ranks, (k,)) | {"users": n}
