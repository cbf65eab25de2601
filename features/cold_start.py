"""Pure math of the cold-item baselines (issue 38): content kNN over text vectors, kNN fill-in of untrained item
rows, a ridge map from text vectors to trained item vectors. Numpy only; no reads or writes.

Every item array is indexed by item (row 0 is padding, like the models' tables); text vectors are the metadata
text's (title, brand, category, price, the catalogue's own description), so a cold item has one from its first
night and nothing in them comes from interactions.
"""
from __future__ import annotations

import numpy as np


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Each row divided by its L2 norm; an all-zero row stays zero."""
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, n, out=np.zeros_like(x, dtype=np.float32), where=n > 0).astype(np.float32)


def recency_ages(lengths: np.ndarray) -> np.ndarray:
    """The age of each entry of ragged rows laid end to end (``lengths`` per row, oldest first): the last entry of a
    row has age 0, the one before 1, and so on. (nnz,) int64."""
    lengths = np.asarray(lengths, np.int64)
    ends = np.repeat(np.cumsum(lengths), lengths)
    return ends - 1 - np.arange(int(lengths.sum()))


def recency_profiles(text: np.ndarray, rows: np.ndarray, items: np.ndarray, ages: np.ndarray, n_rows: int,
                     decay: float) -> np.ndarray:
    """(n_rows, D) weighted means ``sum_j decay**age_j * text[item_j] / sum_j decay**age_j`` over each row's
    entries (``rows``, ``items``, ``ages`` aligned; ``rows`` ascending); ``decay=1`` is the plain mean, ``decay=0`` the
    last item alone (``0**0 = 1``). A row without entries is zero."""
    w = np.power(float(decay), ages.astype(np.float64))                       # (nnz,)
    vals = np.zeros((len(items) + 1, text.shape[1]), np.float64)
    np.cumsum(w[:, None] * text[items], axis=0, out=vals[1:])                 # (nnz + 1, D) running sums
    wsum = np.concatenate([[0.0], np.cumsum(w)])
    counts = np.bincount(rows, minlength=n_rows)[:n_rows]
    ends = np.cumsum(counts)
    starts = ends - counts
    total = wsum[ends] - wsum[starts]                                         # (n_rows,)
    prof = (vals[ends] - vals[starts]) / np.where(total > 0, total, 1.0)[:, None]
    return prof.astype(np.float32)


def cosine_scores(profiles: np.ndarray, text: np.ndarray) -> np.ndarray:
    """(B, N + 1) cosine between each profile (B, D) and each item's text vector (N + 1, D); 0 where either is
    zero."""
    return unit_rows(profiles) @ unit_rows(text).T


def top_similar(queries: np.ndarray, keys: np.ndarray, k: int, block: int = 1024) -> np.ndarray:
    """(Q, k) indices into ``keys`` of the ``k`` rows most cosine-similar to each query, best first, ties broken by
    the lower index (``k`` at most ``len(keys)``)."""
    q, kv = unit_rows(queries), unit_rows(keys)
    k = min(k, len(kv))
    out = np.empty((len(q), k), np.int64)
    for s in range(0, len(q), block):
        sim = q[s:s + block] @ kv.T                                           # (b, K)
        out[s:s + block] = np.argsort(-sim, axis=1, kind="stable")[:, :k]
    return out


def fill_in(item_vectors: np.ndarray, text: np.ndarray, cold: np.ndarray, donors: np.ndarray,
            k: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """A copy of ``item_vectors`` (N + 1, H) where each ``cold`` item (indices) gets the mean of the trained vectors
    of its ``k`` most text-similar ``donors`` (indices of warm items with trained rows); every other row is
    unchanged. Returns the filled table and the (C, k) donor items each cold item took."""
    out = np.array(item_vectors, dtype=np.float32, copy=True)
    cold, donors = np.asarray(cold, np.int64), np.asarray(donors, np.int64)
    if len(cold) == 0 or len(donors) == 0:
        return out, np.zeros((len(cold), 0), np.int64)
    nb = donors[top_similar(text[cold], text[donors], k)]                    # (C, k) item indices
    out[cold] = item_vectors[nb].mean(axis=1)                                # (C, k, H) -> (C, H)
    return out, nb


def ridge_fit(x: np.ndarray, y: np.ndarray, lam: float) -> tuple[np.ndarray, np.ndarray]:
    """Closed-form ridge regression with an unpenalised intercept: ``W`` (D, H) and ``b`` (H,) minimising
    ``|x W + b - y|^2 + lam |W|^2`` over the rows of ``x`` (n, D) and ``y`` (n, H)."""
    x64, y64 = np.asarray(x, np.float64), np.asarray(y, np.float64)
    mx, my = x64.mean(0), y64.mean(0)
    xc, yc = x64 - mx, y64 - my
    gram = xc.T @ xc + lam * np.eye(x64.shape[1])
    w = np.linalg.lstsq(gram, xc.T @ yc, rcond=None)[0] if lam <= 0 else np.linalg.solve(gram, xc.T @ yc)
    return w, my - mx @ w


def ridge_predict(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (np.asarray(x, np.float64) @ w + b).astype(np.float32)


def infonce_map(text: np.ndarray, target: np.ndarray, rows: np.ndarray, temperature: float = 0.1,
                epochs: int = 30, batch: int = 1024, lr: float = 0.01, seed: int = 0) -> np.ndarray:
    """A linear map ``W`` (D, H) that aligns text vectors ``text`` (N, D) with a trained model's item vectors
    ``target`` (N, H), fit by InfoNCE over the items ``rows`` (indices): in each batch, the cosine between an
    item's mapped text and its own item vector, over ``temperature``, should beat the batch's other items'
    (in-batch negatives; both directions). Adam, ``epochs`` passes over ``rows`` in seeded batches."""
    import torch

    g = torch.Generator().manual_seed(seed)
    x = torch.from_numpy(np.asarray(text, np.float32))
    y = torch.nn.functional.normalize(torch.from_numpy(np.asarray(target, np.float32)), dim=1)
    w = torch.zeros(x.shape[1], y.shape[1])
    torch.nn.init.normal_(w, std=x.shape[1] ** -0.5, generator=g)
    w.requires_grad_(True)
    opt = torch.optim.Adam([w], lr=lr)
    idx = torch.from_numpy(np.asarray(rows, np.int64))
    for _ in range(epochs):
        for b in idx[torch.randperm(len(idx), generator=g)].split(batch):
            q = torch.nn.functional.normalize(x[b] @ w, dim=1)                 # (B, H)
            logits = q @ y[b].T / temperature                                   # (B, B)
            eye = torch.arange(len(b))
            loss = torch.nn.functional.cross_entropy(logits, eye) + torch.nn.functional.cross_entropy(logits.T, eye)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return w.detach().numpy()


def norm_matched(pred: np.ndarray, reference: np.ndarray, scale: float) -> np.ndarray:
    """``pred`` rescaled so its mean row norm is ``scale`` times ``reference``'s (the trained items')."""
    p = float(np.linalg.norm(pred, axis=1).mean()) if len(pred) else 0.0
    r = float(np.linalg.norm(reference, axis=1).mean()) if len(reference) else 0.0
    return (pred * (scale * r / p if p > 0 else 0.0)).astype(np.float32)


def dot_moments(users: np.ndarray, items: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row of ``users`` (B, H): the mean and the standard deviation of its dot products with the rows of
    ``items`` (M, H), without forming the (B, M) products (``u . mean`` and ``sqrt(u C u)``, ``C`` the rows'
    covariance). (B,), (B,) float64."""
    x, u = np.asarray(items, np.float64), np.asarray(users, np.float64)
    cov = np.cov(x, rowvar=False, bias=True).reshape(x.shape[1], x.shape[1])
    return u @ x.mean(0), np.sqrt(np.maximum(np.einsum("bh,hk,bk->b", u, cov, u), 0.0))


def text_gate(users: np.ndarray, items: np.ndarray, profiles: np.ndarray, text: np.ndarray, cold: np.ndarray,
              gamma: float, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """A factor model ``(U', V')`` that scores warm items by the model's own score and cold items by their text,
    each standardised per user so that the two compare:

    * warm item i: ``(u . v_i - m_u) / s_u``, ``m_u``, ``s_u`` the mean and deviation of ``u``'s warm scores;
    * cold item i: ``gamma * ((p_u . t_i - c_u) / d_u - threshold)``, ``p_u`` the user's text profile and ``t_i``
      the item's text vector (both unit length), ``c_u``, ``d_u`` the mean and deviation of ``p_u``'s cosines.

    A cold item enters a user's list only where its text matches the user's profile ``threshold`` deviations above
    that user's usual; ``gamma`` sets how fast it climbs beyond. One dot product, so it serves as any factor model:
    ``U' = [u / s_u, gamma p_u / d_u, -m_u / s_u, -gamma (c_u / d_u + threshold)]``, a warm row ``[v_i, 0, 1, 0]``,
    a cold row ``[0, t_i, 0, 1]``, row 0 (padding) zero. ``users`` (B, H), ``items`` (N + 1, H), ``profiles``
    (B, D), ``text`` (N + 1, D), ``cold`` (N + 1,) bool."""
    cold = np.asarray(cold, bool).copy()
    cold[0] = False
    warm = ~cold
    warm[0] = False
    t, p = unit_rows(text), unit_rows(profiles)
    m, s = dot_moments(users, items[warm])
    c, d = dot_moments(p, t[1:])
    inv_s, inv_d = 1.0 / np.maximum(s, 1e-12), np.where(d > 0, 1.0 / np.maximum(d, 1e-12), 0.0)
    u_out = np.concatenate([users * inv_s[:, None], gamma * p * inv_d[:, None], (-m * inv_s)[:, None],
                            (-gamma * c * inv_d)[:, None]], axis=1)
    h, dim = items.shape[1], text.shape[1]
    v_out = np.zeros((len(items), h + dim + 2), np.float64)
    v_out[warm, :h], v_out[warm, h + dim] = items[warm], 1.0
    v_out[cold, h:h + dim], v_out[cold, h + dim + 1] = t[cold], 1.0
    return gate_threshold(u_out.astype(np.float32), gamma, threshold), v_out.astype(np.float32)


def gate_threshold(users: np.ndarray, gamma: float, threshold: float) -> np.ndarray:
    """``text_gate``'s user table built at threshold 0, moved to ``threshold`` (a copy): only its last column, the
    cold items' offset, changes, so a scan over thresholds builds the gate once."""
    out = users.copy()
    out[:, -1] -= gamma * threshold
    return out
