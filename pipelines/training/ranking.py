"""Full-ranking validation in torch for any model that scores by a dot product of user and item vectors."""
from __future__ import annotations

import numpy as np
import torch

from pipelines.evaluation.protocol import Csr


@torch.no_grad()
def full_ranks(users: torch.Tensor, items: torch.Tensor, hist: Csr, targets: np.ndarray,
               batch: int = 4096) -> np.ndarray:
    """0-based full-ranking rank of each user's target, the protocol of ``pipelines.evaluation`` in torch (threaded).

    users (U, H), items (N + 1, H); only users with a target (``targets > 0``) are ranked. History and padding are not
    candidates, the target always is, ties count against the target.
    """
    who = np.flatnonzero(targets > 0)
    out = np.empty(len(who), np.int64)
    for lo in range(0, len(who), batch):
        b = who[lo:lo + batch]
        s = users[torch.from_numpy(b)] @ items.T                                 # (B, N + 1)
        tgt = torch.from_numpy(targets[b].astype(np.int64))
        rows = torch.arange(len(b))
        ts = s[rows, tgt].clone()                                               # (B,)
        r, it = hist.rows(b)
        s[torch.from_numpy(r), torch.from_numpy(it.astype(np.int64))] = float("-inf")
        s[:, 0] = float("-inf")
        s[rows, tgt] = ts
        out[lo:lo + len(b)] = ((s >= ts[:, None]).sum(1) - 1).numpy()
    return out
