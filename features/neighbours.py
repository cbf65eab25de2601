"""Pure transform (features layer): top-k cosine neighbours of unit vectors, self excluded; no I/O.

``exact_topk`` is a blocked matrix multiply: a block of queries against all keys at a time, so memory stays at
``block x N`` scores however large N is. ``faiss_topk`` does the same search with a FAISS index (any
``index_factory`` string: ``Flat`` is exact, ``HNSW32`` or ``IVF...`` approximate) for large catalogues.
"""
from __future__ import annotations

import numpy as np

BLOCK_BUDGET = 2**30  # bytes of one block of a (rows x N) score matrix and its work arrays


def block_rows(n_cols: int, rows: int, bytes_per_cell: int, budget: int | None = None) -> int:
    """Rows of a (rows x ``n_cols``) score block: at most ``rows``, and no more than keep ``bytes_per_cell`` bytes a
    cell within ``budget`` (default ``BLOCK_BUDGET``), so memory stays bounded however large the catalogue or the
    user base grows. The one rule for every blocked scoring (neighbours here, full-ranking evaluation and
    validation in ``pipelines.evaluation.protocol.scoring_batch``)."""
    return max(1, min(rows, (budget or BLOCK_BUDGET) // (bytes_per_cell * max(n_cols, 1))))


def exact_topk(vectors: np.ndarray, k: int, block: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """For each row of ``vectors`` (N, D), unit-norm float32: the ``k`` most similar other rows, ``block`` rows at
    a time or fewer (``block_rows``: float32 scores and topk's work, about 8 bytes a cell).

    Returns ``(index (N, k) int64, score (N, k) float32)``, best first; ties broken by the lower index.
    """
    import torch

    x = torch.from_numpy(np.require(vectors, np.float32, ["C", "W"]))  # (N, D), a writable copy only if needed
    n = x.shape[0]
    k = min(k, n - 1)
    block = block_rows(n, block, 8)
    idx = np.empty((n, k), np.int64)
    val = np.empty((n, k), np.float32)
    for s in range(0, n, block):
        q = x[s:s + block]                                  # (b, D)
        sim = q @ x.T                                       # (b, N)
        rows = torch.arange(q.shape[0])
        sim[rows, rows + s] = -torch.inf                    # never your own neighbour
        v, i = torch.topk(sim, k, dim=1, sorted=True)       # (b, k)
        idx[s:s + block], val[s:s + block] = i.numpy(), v.numpy()
    return idx, val


def faiss_topk(vectors: np.ndarray, k: int, index: str = "Flat") -> tuple[np.ndarray, np.ndarray]:
    """Same contract as ``exact_topk``, searched with ``faiss.index_factory(D, index, inner product)``."""
    import faiss

    x = np.ascontiguousarray(vectors, dtype=np.float32)
    n, d = x.shape
    k = min(k, n - 1)
    ix = faiss.index_factory(d, index, faiss.METRIC_INNER_PRODUCT)
    if not ix.is_trained:
        ix.train(x)
    ix.add(x)
    val, idx = ix.search(x, k + 1)                          # (N, k+1): usually self first
    own = idx == np.arange(n)[:, None]
    keep = ~own & (idx >= 0)
    # drop self (or, when self was crowded out by exact duplicates, the last hit) to leave k per row
    keep[~own.any(1), k] = False
    return idx[keep].reshape(n, k).astype(np.int64), val[keep].reshape(n, k).astype(np.float32)


def share_rate(neigh: np.ndarray, labels: list[set], rng: np.random.Generator | None = None) -> tuple[float, float]:
    """How often a row and its neighbours share a label, against as many uniformly random pairs.

    ``neigh`` (N, k) holds 0-based row indices; ``labels[i]`` the label set of row ``i``. Rows without labels are
    left out. Returns ``(neighbour_rate, random_rate)``.
    """
    rng = rng or np.random.default_rng(0)
    n, k = neigh.shape
    has = np.array([bool(s) for s in labels])
    rows = np.repeat(np.arange(n), k)
    cols = neigh.ravel()
    ok = has[rows] & has[cols]
    hit = np.mean([bool(labels[a] & labels[b]) for a, b in zip(rows[ok], cols[ok], strict=True)])
    rnd = rng.integers(0, n, size=(2, int(ok.sum())))
    rnd = rnd[:, (rnd[0] != rnd[1]) & has[rnd[0]] & has[rnd[1]]]
    base = np.mean([bool(labels[a] & labels[b]) for a, b in zip(rnd[0], rnd[1], strict=True)])
    return float(hit), float(base)
