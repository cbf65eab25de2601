"""Pure transforms between the ``sequences`` table and matrices."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import scipy.sparse as sp


def count_matrix(seq: pa.Table, n_users: int, n_items: int, splits: tuple[str, ...],
                 exclude: pa.Array | None = None) -> sp.csr_matrix:
    """(U, N + 1) CSR of interaction counts over the given splits (column 0 is padding, always empty). ``exclude``:
    items whose interactions are left out, their columns empty (the cold items: a valid target can be one)."""
    t = seq.filter(pc.is_in(seq.column("split"), pa.array(list(splits))))
    if exclude is not None:
        t = t.filter(pc.invert(pc.is_in(t.column("item_idx"), exclude.cast(t.column("item_idx").type))))
    u = t.column("user_idx").to_numpy()
    i = t.column("item_idx").to_numpy()
    m = sp.csr_matrix((np.ones(len(u), np.float32), (u, i)), shape=(n_users, n_items + 1))
    m.sum_duplicates()
    return m
