"""Full-ranking validation in torch for any model that scores by a dot product of user and item vectors, and the
items a training loss may draw as negatives."""
from __future__ import annotations

import numpy as np
import torch

from pipelines.evaluation.protocol import Csr, EvalData, against_target, candidates_mask, scoring_batch


@torch.no_grad()
def full_ranks(users: torch.Tensor, items: torch.Tensor, hist: Csr, targets: np.ndarray,
               batch: int = 4096) -> np.ndarray:
    """0-based full-ranking rank of each user's target, the protocol of ``pipelines.evaluation`` in torch (threaded).

    users (U, H), items (N + 1, H); only users with a target (``targets > 0``) are ranked. History and padding are not
    candidates, the target always is; ties count against the target and a NaN score is the worst
    (``protocol.against_target``), so a diverged epoch ranks every target last and early stopping never keeps it.
    """
    who = np.flatnonzero(targets > 0)
    out = np.empty(len(who), np.int64)
    batch = scoring_batch(items.shape[0] - 1, batch)
    for lo in range(0, len(who), batch):
        b = who[lo:lo + batch]
        s = users[torch.from_numpy(b)] @ items.T                                 # (B, N + 1)
        tgt = targets[b].astype(np.int64)
        ts = s[torch.arange(len(b)), torch.from_numpy(tgt)]                     # (B,)
        r, it = hist.rows(b)
        cand = torch.from_numpy(candidates_mask(tuple(s.shape), r, it.astype(np.int64), tgt))
        out[lo:lo + len(b)] = ((against_target(s, ts) & cand).sum(1) - 1).numpy()  # minus the target itself
    return out


def training_exclude(data: EvalData, device: str | torch.device = "cpu") -> torch.Tensor | None:
    """(N + 1,) bool on ``device``: the items no training softmax may see (the cold items; ``ce_loss``'s and
    ``ranking_loss``'s ``exclude``), or None when the split held none out."""
    return None if data.cold is None else torch.from_numpy(data.cold_mask()).to(device)


def sample_items(rng: np.random.Generator, n_items: int, size: tuple[int, ...],
                 exclude: torch.Tensor | None = None) -> np.ndarray:
    """Uniform item ids ``1..n_items`` of shape ``size`` (sampled negatives), never an ``exclude`` item."""
    if exclude is None:
        return rng.integers(1, n_items + 1, size=size)
    allowed = np.flatnonzero(~exclude.cpu().numpy()[1:]) + 1
    return allowed[rng.integers(0, len(allowed), size=size)]


class NegativeSampler:
    """Shared negatives of the sampled softmax (``models.sasrec.sampled_ce_loss``): ``n`` item ids per batch drawn
    with replacement with probability proportional to (training-target count + 1) ** 0.75 (word2vec's smoothing:
    popular items, the hard negatives, are drawn more, rare ones still are), never padding or an ``exclude``
    item; ``log_q`` (N + 1,) = log(n q_i), the correction each logit gets."""

    def __init__(self, counts: np.ndarray, n: int, exclude: torch.Tensor | None = None) -> None:
        w = (counts.astype(np.float64) + 1.0) ** 0.75                          # (N + 1,)
        w[0] = 0.0
        if exclude is not None:
            w[exclude.cpu().numpy()] = 0.0
        self.q, self.n = w / w.sum(), n
        self.cdf = np.cumsum(self.q)
        self.log_q = torch.from_numpy(np.log(np.maximum(n * self.q, 1e-30))).float()

    def draw(self, rng: np.random.Generator) -> np.ndarray:
        """(n,) item ids (inverse-CDF sampling: O(n log N) a batch)."""
        return np.minimum(np.searchsorted(self.cdf, rng.random(self.n) * self.cdf[-1], side="right"),
                          len(self.cdf) - 1)
