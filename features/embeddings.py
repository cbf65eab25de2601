"""Pure transforms of the ``text_embeddings`` table (``features.schemas.TEXT_EMBEDDINGS``)."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


def vectors_of(tbl: pa.Table, kind: str, source: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The ``kind`` (item | user) vectors of text ``source`` ordered by idx: ``(N, D)`` float32, their idx, their ids."""
    part = tbl.filter(pc.and_(pc.equal(tbl.column("kind"), kind), pc.equal(tbl.column("source"), source)))
    part = part.sort_by("idx")
    flat = part.column("vector").combine_chunks()
    n = part.num_rows
    vec = np.asarray(flat.values, np.float32).reshape(n, -1) if n else np.zeros((0, 0), np.float32)
    return vec, part.column("idx").to_numpy(), part.column("id").to_pylist()
